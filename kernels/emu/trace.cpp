// trace.cpp -- memory-access tracing for the emulator's profiling build.
//
// A profiling module (EmuModule(..., trace=True)) compiles the kernel source with g++'s
// ThreadSanitizer *instrumentation* (-fsanitize=thread at compile time only), which
// makes g++ call __tsan_read4(addr), __tsan_write16(addr), ... before every memory
// access that may touch non-local memory. The TSan runtime is not linked: this file
// defines those entry points and records each access of the traced blocks as
// (block, thread, call site, address, size, read/write, space). Nothing else of TSan
// is used; this file itself and runtime.cpp are compiled without instrumentation.
//
// Spaces: global = inside an array passed as a kernel argument (ranges set by Python);
// shared = the launch's dynamic shared memory or the module's thread-local storage
// (static __shared__ arrays are thread_local in cuda_emu.h), except the emulator's own
// threadIdx/blockIdx state; everything else (fiber stacks, constants) is counted as
// dropped and not recorded.
//
// Limits (see gpugrad/backend/profile.py): one worker thread; the call site is the
// return address of the hook, i.e. one x86 access instruction, which stands for one
// SASS memory instruction; g++ must keep 16-byte float4 accesses whole (the profiling
// build adds -fno-tree-sra -fno-tree-vectorize).
#include "cuda_emu.h"

#include <dlfcn.h>
#include <link.h>

#include <cstdint>
#include <mutex>
#include <vector>

extern __thread gpugrad_emu_ts_t gpugrad_emu_ts;

namespace {

struct Rec {
    uint64_t addr;
    uint32_t pc;      // offset of the call site from the module's load address
    uint32_t block;   // linear block index
    uint32_t thread;  // linear thread index in the block
    uint8_t size;
    uint8_t flags;  // bit 0 write, bit 1 shared (else global), bit 2 atomic
    uint16_t arg;   // kernel argument index of a global access (0xffff: shared)
};
static_assert(sizeof(Rec) == 24, "Rec layout is read by gpugrad/backend/emu.py");

std::mutex g_mu;
bool g_on = false;
std::vector<Rec> g_recs;
std::vector<uint64_t> g_ranges;   // lo0, hi0, lo1, hi1, ... (kernel arguments)
std::vector<uint32_t> g_blocks;   // traced linear block indices, sorted
unsigned long long g_dyn_size = 0;
unsigned long long g_dropped = 0;
uintptr_t g_base = 0;
uintptr_t g_tls_lo = 0, g_tls_hi = 0;
size_t g_tls_size = 0;
size_t g_limit = 0;

__thread long long t_block = -1;  // cached: the block last seen and whether it is traced
__thread bool t_traced = false;

int tls_size_cb(struct dl_phdr_info *info, size_t, void *data) {
    if (info->dlpi_addr != g_base) return 0;
    for (int i = 0; i < info->dlpi_phnum; ++i)
        if (info->dlpi_phdr[i].p_type == PT_TLS) *static_cast<size_t *>(data) = info->dlpi_phdr[i].p_memsz;
    return 1;
}

// This thread's TLS block of this module (where the static __shared__ arrays live).
void find_tls() {
    Dl_info info;
    if (!dladdr(reinterpret_cast<void *>(&find_tls), &info)) return;
    g_base = reinterpret_cast<uintptr_t>(info.dli_fbase);
    size_t size = 0;
    dl_iterate_phdr(tls_size_cb, &size);
    void *h = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
    void *block = nullptr;
    if (h) {
        dlinfo(h, RTLD_DI_TLS_DATA, &block);
        dlclose(h);
    }
    g_tls_size = size;
    if (block) {
        g_tls_lo = reinterpret_cast<uintptr_t>(block);
        g_tls_hi = g_tls_lo + size;
    }
}

inline void record(const void *p, unsigned size, unsigned flags, void *ret) {
    if (!g_on) return;
    const gpugrad_emu_ts_t &ts = gpugrad_emu_ts;
    long long b = ts.bid.x + (long long)ts.gdim.x * (ts.bid.y + (long long)ts.gdim.y * ts.bid.z);
    if (b != t_block) {
        t_block = b;
        t_traced = std::binary_search(g_blocks.begin(), g_blocks.end(), (uint32_t)b);
    }
    if (!t_traced) return;
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    unsigned arg = 0xffff;
    for (size_t i = 0; i < g_ranges.size(); i += 2)
        if (a >= g_ranges[i] && a < g_ranges[i + 1]) {
            arg = (unsigned)(i / 2);
            break;
        }
    if (arg == 0xffff) {
        uintptr_t dyn = reinterpret_cast<uintptr_t>(ts.dyn_smem);
        uintptr_t self = reinterpret_cast<uintptr_t>(&gpugrad_emu_ts);
        bool in_dyn = dyn && a >= dyn && a < dyn + g_dyn_size;
        if (g_tls_hi == 0) find_tls();
        bool in_tls = a >= g_tls_lo && a < g_tls_hi && !(a >= self && a < self + sizeof(gpugrad_emu_ts_t));
        if (!in_dyn && !in_tls) {
            ++g_dropped;
            return;
        }
        flags |= 2u;
    }
    if (g_limit && g_recs.size() >= g_limit) {
        ++g_dropped;
        return;
    }
    Rec r;
    r.addr = a;
    r.pc = (uint32_t)(reinterpret_cast<uintptr_t>(ret) - g_base);
    r.block = (uint32_t)b;
    r.thread = ts.tid.x + ts.bdim.x * (ts.tid.y + ts.bdim.y * ts.tid.z);
    r.size = (uint8_t)size;
    r.flags = (uint8_t)flags;
    r.arg = (uint16_t)arg;
    g_recs.push_back(r);
}

}  // namespace

#define GPUGRAD_RET __builtin_extract_return_addr(__builtin_return_address(0))
#define GPUGRAD_HOOKS(N)                                                                            \
    extern "C" void __tsan_read##N(void *p) { record(p, N, 0, GPUGRAD_RET); }                     \
    extern "C" void __tsan_write##N(void *p) { record(p, N, 1, GPUGRAD_RET); }                    \
    extern "C" void __tsan_unaligned_read##N(void *p) { record(p, N, 0, GPUGRAD_RET); }           \
    extern "C" void __tsan_unaligned_write##N(void *p) { record(p, N, 1, GPUGRAD_RET); }          \
    extern "C" void __tsan_volatile_read##N(void *p) { record(p, N, 0, GPUGRAD_RET); }            \
    extern "C" void __tsan_volatile_write##N(void *p) { record(p, N, 1, GPUGRAD_RET); }
GPUGRAD_HOOKS(1)
GPUGRAD_HOOKS(2)
GPUGRAD_HOOKS(4)
GPUGRAD_HOOKS(8)
GPUGRAD_HOOKS(16)
#undef GPUGRAD_HOOKS

extern "C" void __tsan_read_range(void *p, unsigned long size) { record(p, (unsigned)size, 0, GPUGRAD_RET); }
extern "C" void __tsan_write_range(void *p, unsigned long size) { record(p, (unsigned)size, 1, GPUGRAD_RET); }
extern "C" void __tsan_init() {}
extern "C" void __tsan_func_entry(void *) {}
extern "C" void __tsan_func_exit() {}
extern "C" void __tsan_vptr_update(void **, void *) {}
extern "C" void __tsan_vptr_read(void **) {}

// Atomics: g++ turns __atomic builtins into these calls under -fsanitize=thread.
#define GPUGRAD_ATOMICS(N, T)                                                                           \
    extern "C" T __tsan_atomic##N##_load(const volatile T *a, int) {                                    \
        record((const void *)a, sizeof(T), 4, GPUGRAD_RET);                                             \
        return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                    \
    }                                                                                                   \
    extern "C" void __tsan_atomic##N##_store(volatile T *a, T v, int) {                                 \
        record((const void *)a, sizeof(T), 5, GPUGRAD_RET);                                             \
        __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                       \
    }                                                                                                   \
    extern "C" T __tsan_atomic##N##_exchange(volatile T *a, T v, int) {                                 \
        record((const void *)a, sizeof(T), 5, GPUGRAD_RET);                                             \
        return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                             \
    }                                                                                                   \
    extern "C" T __tsan_atomic##N##_fetch_add(volatile T *a, T v, int) {                                \
        record((const void *)a, sizeof(T), 5, GPUGRAD_RET);                                             \
        return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                              \
    }                                                                                                   \
    extern "C" T __tsan_atomic##N##_fetch_sub(volatile T *a, T v, int) {                                \
        record((const void *)a, sizeof(T), 5, GPUGRAD_RET);                                             \
        return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                              \
    }                                                                                                   \
    extern "C" T __tsan_atomic##N##_fetch_and(volatile T *a, T v, int) {                                \
        record((const void *)a, sizeof(T), 5, GPUGRAD_RET);                                             \
        return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                              \
    }                                                                                                   \
    extern "C" T __tsan_atomic##N##_fetch_or(volatile T *a, T v, int) {                                 \
        record((const void *)a, sizeof(T), 5, GPUGRAD_RET);                                             \
        return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                               \
    }                                                                                                   \
    extern "C" T __tsan_atomic##N##_fetch_xor(volatile T *a, T v, int) {                                \
        record((const void *)a, sizeof(T), 5, GPUGRAD_RET);                                             \
        return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                              \
    }                                                                                                   \
    extern "C" T __tsan_atomic##N##_fetch_nand(volatile T *a, T v, int) {                               \
        record((const void *)a, sizeof(T), 5, GPUGRAD_RET);                                             \
        return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST);                                             \
    }                                                                                                   \
    extern "C" int __tsan_atomic##N##_compare_exchange_strong(volatile T *a, T *c, T v, int, int) {     \
        record((const void *)a, sizeof(T), 5, GPUGRAD_RET);                                             \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);         \
    }                                                                                                   \
    extern "C" int __tsan_atomic##N##_compare_exchange_weak(volatile T *a, T *c, T v, int, int) {       \
        record((const void *)a, sizeof(T), 5, GPUGRAD_RET);                                             \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);         \
    }                                                                                                   \
    extern "C" T __tsan_atomic##N##_compare_exchange_val(volatile T *a, T c, T v, int, int) {           \
        record((const void *)a, sizeof(T), 5, GPUGRAD_RET);                                             \
        __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);               \
        return c;                                                                                       \
    }
GPUGRAD_ATOMICS(8, unsigned char)
GPUGRAD_ATOMICS(16, unsigned short)
GPUGRAD_ATOMICS(32, unsigned int)
GPUGRAD_ATOMICS(64, unsigned long long)
#undef GPUGRAD_ATOMICS
extern "C" void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
extern "C" void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

// ---------------------------------------------------------------------------------
// Python API (gpugrad/backend/emu.py)
#define GPUGRAD_TRACE_API extern "C" __attribute__((visibility("default")))

// ranges: 2*nranges addresses (lo, hi) of the kernel's array arguments, in argument
// order (an empty range for a scalar); blocks: the sorted linear block indices to trace;
// limit: the most records kept (0: no limit).
GPUGRAD_TRACE_API void gpugrad_trace_begin(const unsigned long long *ranges, int nranges,
                                           unsigned long long dyn_size, const unsigned *blocks,
                                           int nblocks, unsigned long long limit) {
    std::lock_guard<std::mutex> lk(g_mu);
    g_recs.clear();
    g_ranges.assign(ranges, ranges + 2 * nranges);
    g_blocks.assign(blocks, blocks + nblocks);
    std::sort(g_blocks.begin(), g_blocks.end());
    g_dyn_size = dyn_size;
    g_dropped = 0;
    g_limit = (size_t)limit;
    g_tls_lo = g_tls_hi = 0;
    t_block = -1;
    find_tls();
    g_on = true;
}

GPUGRAD_TRACE_API unsigned long long gpugrad_trace_end(unsigned long long *dropped) {
    std::lock_guard<std::mutex> lk(g_mu);
    g_on = false;
    t_block = -1;
    if (dropped) *dropped = g_dropped;
    return g_recs.size();
}

// Copies the records (24 bytes each) into out; returns how many.
GPUGRAD_TRACE_API unsigned long long gpugrad_trace_fetch(void *out, unsigned long long cap) {
    std::lock_guard<std::mutex> lk(g_mu);
    unsigned long long n = g_recs.size() < cap ? g_recs.size() : cap;
    std::memcpy(out, g_recs.data(), n * sizeof(Rec));
    std::vector<Rec>().swap(g_recs);
    return n;
}
