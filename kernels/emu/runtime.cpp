// runtime.cpp -- CPU execution of CUDA kernels compiled with cuda_emu.h.
//
// Every CUDA thread of a block is a fiber with its own mmap'd stack; all fibers of a
// block run on one OS worker thread (so __shared__ = thread_local is per block), and
// blocks are spread over `workers` OS threads. Fibers switch only at barriers and warp
// operations, so the code between two of them runs as one uninterrupted piece; the
// order in which the fibers of a block run those pieces is forward, reverse or
// (seeded) random, which makes a missing __syncthreads produce wrong results.
//
// Errors (divergent barriers, deadlocks, bad warp masks, threads exiting while
// others wait at a barrier) abort the launch and are returned as a message, never a
// hang. Linked into every emulated module (kernels/emu/*.so built by
// gpugrad/backend/emu.py); the exported C API is gpugrad_emu_launch().
// why first: <condition_variable> uses __noinline__, which cuda_emu.h redefines
#include <condition_variable>

#include "cuda_emu.h"

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdarg>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <xmmintrin.h>  // _mm_getcsr/_mm_setcsr: FTZ/DAZ for -ftz=true (see worker_main)
#endif

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define GPUGRAD_ASAN 1
#else
#define GPUGRAD_ASAN 0
#endif

// Other architectures use glibc's ucontext (slower); -DGPUGRAD_EMU_UCONTEXT forces it.
#if defined(__x86_64__) && !defined(GPUGRAD_EMU_UCONTEXT)
#define GPUGRAD_X86_SWITCH 1
#else
#define GPUGRAD_X86_SWITCH 0
#include <ucontext.h>
#endif

__thread gpugrad_emu_ts_t gpugrad_emu_ts;

namespace {

constexpr size_t kStackSize = 256 * 1024;
constexpr size_t kMaxPooledStacks = 2048;  // stacks kept for reuse per module
constexpr unsigned kWarp = 32;

// ---------------------------------------------------------------------------------
// Context switch. x86-64: ~20 instructions, an order of magnitude faster than
// swapcontext (which also saves the signal mask with a system call).
#if GPUGRAD_X86_SWITCH
struct Ctx {
    void *sp = nullptr;
};
extern "C" void gpugrad_emu_swap(void **save_sp, void *new_sp);
asm(R"(
    .text
    .p2align 4
    .hidden gpugrad_emu_swap
    .globl gpugrad_emu_swap
    .type gpugrad_emu_swap,@function
gpugrad_emu_swap:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size gpugrad_emu_swap,.-gpugrad_emu_swap
)");
inline void ctx_init(Ctx *c, char *lo, size_t size, void (*fn)()) {
    // why this layout: after gpugrad_emu_swap pops 6 registers and `ret`s into fn, rsp
    // must be 8 mod 16, as if fn had been called.
    auto top = reinterpret_cast<uintptr_t>(lo + size) & ~uintptr_t(15);
    void **sp = reinterpret_cast<void **>(top);
    *--sp = nullptr;                           // fake return address of fn
    *--sp = reinterpret_cast<void *>(fn);      // ret target
    for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp rbx r12-r15
    c->sp = sp;
}
inline void ctx_swap(Ctx *from, Ctx *to) { gpugrad_emu_swap(&from->sp, to->sp); }
#else
struct Ctx {
    ucontext_t uc;
};
inline void ctx_init(Ctx *c, char *lo, size_t size, void (*fn)()) {
    getcontext(&c->uc);
    c->uc.uc_stack.ss_sp = lo;
    c->uc.uc_stack.ss_size = size;
    c->uc.uc_link = nullptr;
    makecontext(&c->uc, fn, 0);
}
inline void ctx_swap(Ctx *from, Ctx *to) { swapcontext(&from->uc, &to->uc); }
#endif

// ---------------------------------------------------------------------------------
// Stack pool: mmap'd stacks with a guard page, reused across blocks and launches.
std::mutex g_stack_mu;
std::vector<char *> g_stacks;  // usable low address; guard page just below

char *stack_get() {
    {
        std::lock_guard<std::mutex> lk(g_stack_mu);
        if (!g_stacks.empty()) {
            char *s = g_stacks.back();
            g_stacks.pop_back();
            return s;
        }
    }
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void *m = mmap(nullptr, kStackSize + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED) return nullptr;
    mprotect(m, page, PROT_NONE);
    return static_cast<char *>(m) + page;
}
void stack_put(char *s, bool dirty) {
#if GPUGRAD_ASAN
    // a fiber abandoned mid-call leaves poisoned redzones on its stack
    if (dirty) __asan_unpoison_memory_region(s, kStackSize);
#else
    (void)dirty;
#endif
    {
        std::lock_guard<std::mutex> lk(g_stack_mu);
        if (g_stacks.size() < kMaxPooledStacks) {
            g_stacks.push_back(s);
            return;
        }
    }
    // why: every stack is two memory mappings (guard + stack) and a process has about
    // 65530; a cooperative launch holds one stack per thread of the whole grid, and
    // every loaded module has its own pool, so keeping them all exhausts the mappings
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    munmap(s - page, kStackSize + page);
}

// Fork safety: a child forked while a worker thread holds g_stack_mu would inherit it
// locked and deadlock at its first launch (data-loader workers fork). fork() takes the
// lock first and both sides release it, so the child's copy is free and consistent.
void stacks_before_fork() { g_stack_mu.lock(); }
void stacks_after_fork() { g_stack_mu.unlock(); }
struct ForkHandlers {
    ForkHandlers() { pthread_atfork(stacks_before_fork, stacks_after_fork, stacks_after_fork); }
} g_fork_handlers;

// ---------------------------------------------------------------------------------
enum State : unsigned char { RUNNABLE, AT_BARRIER, AT_WARP, EXITED };

struct Fiber {
    Ctx ctx;
    char *stack = nullptr;
    uint3 tid;
    unsigned linear = 0;
    State state = RUNNABLE;
    void *asan_fake = nullptr;
    // barrier
    int bar_kind = 0, bar_pred = 0, bar_result = 0;
    // warp op
    int w_kind = 0, w_size = 0, w_arg = 0, w_width = 32, w_pred = 0;
    unsigned w_mask = 0;
    const char *w_file = nullptr;
    int w_line = 0;
    unsigned long long w_value = 0, w_result = 0;
};

struct Launch;

struct Worker {
    Launch *L = nullptr;
    Ctx sched;
    std::vector<Fiber> fibers;
    Fiber *cur = nullptr;
    unsigned n = 0;  // threads per block
    unsigned n_exited = 0, n_at_barrier = 0;
    unsigned n_activemask = 0;  // fibers waiting in __activemask
    const char *bar_file = nullptr;
    int bar_line = 0, bar_kind = 0;
    Fiber *bar_first = nullptr;
    uint3 block{};
    std::string error;
    std::vector<unsigned> order;
    unsigned k = 0;          // position in the current round
    bool progressed = false;  // did any fiber run in this round
    bool from_sched = false;  // (ASan) the next switch leaves the worker's stack
    unsigned long long rng = 0;
    char *dyn = nullptr;
    // stats
    unsigned long long poison = 0, exit_warn = 0, switches = 0;
    // (ASan) the worker's own stack, learnt on the first switch away from it
    const void *sched_stack_bottom = nullptr;
    size_t sched_stack_size = 0;
};

__thread Worker *tw = nullptr;
// -ftz=true for the next launch from this OS thread (gpugrad_emu_set_ftz)
__thread int g_next_ftz = 0;
// run only these linear block indices in the next launch from this OS thread
// (gpugrad_emu_set_block_subset; the profiler's traced blocks)
__thread const unsigned long long *g_next_subset = nullptr;
__thread unsigned long long g_next_subset_n = 0;

}  // namespace

extern "C" {
struct gpugrad_emu_config {
    int order;         // 0 forward, 1 reverse, 2 random
    int exit_policy;   // 0: thread exit while others wait at a barrier is an error, 1: warn
    unsigned long long seed;
    int workers;
};
struct gpugrad_emu_stats {
    unsigned long long blocks, threads, poisoned_reads, exit_barrier_warnings, switches;
};
}

namespace {

struct Launch {
    void (*entry)(void **);
    void **args;
    uint3 grid, block;
    unsigned long long shmem;
    gpugrad_emu_config cfg;
    unsigned long long nblocks;
    std::atomic<unsigned long long> next{0};
    std::atomic<bool> failed{false};
    std::mutex mu;
    std::string error;
    gpugrad_emu_stats stats{};
    int ftz = 0;  // flush float32 denormals (CuPy compiles with -ftz=true)
    const unsigned long long *subset = nullptr;  // run only these blocks (nblocks of them)
    struct CoopState *coop = nullptr;  // cooperative launch (see "Cooperative launch")
};

std::string fmt(const char *f, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
}

std::string where(const Worker *w, const Fiber *f) {
    return fmt("thread (%u,%u,%u) of block (%u,%u,%u)", f->tid.x, f->tid.y, f->tid.z, w->block.x, w->block.y,
               w->block.z);
}

const char *bar_name(int k) {
    static const char *names[] = {"__syncthreads", "__syncthreads_count", "__syncthreads_and", "__syncthreads_or",
                                  "grid.sync"};
    return (k >= 0 && k < 5) ? names[k] : "barrier";
}
const char *warp_name(int k) {
    static const char *names[] = {"__syncwarp",         "__shfl_sync",       "__shfl_up_sync",
                                  "__shfl_down_sync",   "__shfl_xor_sync",   "__ballot_sync",
                                  "__any_sync",         "__all_sync",        "__match_any_sync",
                                  "__match_all_sync",   "__reduce_add_sync", "__reduce_min_sync",
                                  "__reduce_max_sync",  "__reduce_min_sync", "__reduce_max_sync",
                                  "__reduce_and_sync",  "__reduce_or_sync",  "__reduce_xor_sync",
                                  "__activemask"};
    return (k >= 0 && k < GPUGRAD_W_NKINDS) ? names[k] : "warp op";
}

bool same_site(const char *fa, int la, const char *fb, int lb) {
    return la == lb && (fa == fb || (fa && fb && std::strcmp(fa, fb) == 0));
}

// ---------------------------------------------------------------------------------
// Switching. A fiber that blocks (barrier, warp op) or exits picks the next runnable
// fiber itself and switches straight to it; the worker's own stack (w->sched) is
// resumed only when the block has finished or failed.
Fiber *next_fiber(Worker *w);

inline void asan_start(Fiber *from, const void *bottom, size_t size) {
#if GPUGRAD_ASAN
    // from == nullptr: the fiber exits and its fake stack can be destroyed
    __sanitizer_start_switch_fiber(from ? &from->asan_fake : nullptr, bottom, size);
#else
    (void)from, (void)bottom, (void)size;
#endif
}
inline void asan_finish(Worker *w, Fiber *self) {
#if GPUGRAD_ASAN
    const void *bottom = nullptr;
    size_t size = 0;
    __sanitizer_finish_switch_fiber(self ? self->asan_fake : nullptr, &bottom, &size);
    if (w->from_sched) {  // we came from the worker's stack: remember where it is
        w->sched_stack_bottom = bottom;
        w->sched_stack_size = size;
        w->from_sched = false;
    }
#else
    (void)w, (void)self;
#endif
}

// Leave fiber f (blocked, exited or failed) for the next runnable fiber or the worker.
inline void leave(Worker *w, Fiber *f, bool exiting) {
    Fiber *n = next_fiber(w);
    if (n == f) return;  // f itself runs next: no switch
    Fiber *save = exiting ? nullptr : f;
    if (n) {
        w->cur = n;
        gpugrad_emu_ts.tid = n->tid;
        ++w->switches;
        asan_start(save, n->stack, kStackSize);
    } else {
        w->cur = nullptr;
        asan_start(save, w->sched_stack_bottom, w->sched_stack_size);
    }
    ctx_swap(&f->ctx, n ? &n->ctx : &w->sched);
    asan_finish(w, f);  // resumed: whoever switched here set w->cur and threadIdx
}

// Report an error from inside a fiber: record it and never come back.
[[noreturn]] void fiber_fail(Worker *w, Fiber *f, std::string msg) {
    if (w->error.empty()) w->error = std::move(msg);
    leave(w, f, false);
    __builtin_trap();  // a failed block is never resumed
}

// ---------------------------------------------------------------------------------
// Cooperative launch (grid-wide barrier). Every block runs on its own OS thread, so all
// blocks are resident at once, as cuLaunchCooperativeKernel guarantees. A grid barrier
// is a block barrier of kind kBarGrid: when every live thread of the block has arrived,
// the OS thread (inside the last fiber to arrive) waits here for the other blocks.
// Deadlocks are reported instead of hanging: a block that exits or fails while others
// wait at the grid barrier breaks it, and the waiting blocks return with an error.
constexpr int kBarGrid = 4;
constexpr unsigned long long kMaxCoopBlocks = 4096;

struct CoopState {
    std::mutex mu;
    std::condition_variable cv;
    unsigned long long nblocks = 0, arrived = 0, exited = 0, generation = 0;
    bool broken = false;
    std::string why;  // set when broken
    const char *file = nullptr;
    int line = 0;
};

void coop_break(CoopState &S, std::string why) {  // S.mu held
    if (!S.broken) {
        S.broken = true;
        S.why = std::move(why);
    }
    S.cv.notify_all();
}

std::string coop_exit_deadlock(const CoopState &S) {
    return fmt("deadlock at the grid barrier: %llu block(s) wait at grid.sync at %s:%d but %llu block(s) of the "
               "grid have exited without reaching it (every block must reach every grid-wide barrier)",
               S.arrived, S.file ? S.file : "?", S.line, S.exited);
}

bool coop_wait(Worker *w) {
    CoopState &S = *w->L->coop;
    std::unique_lock<std::mutex> lk(S.mu);
    if (S.arrived == 0) {
        S.file = w->bar_file;
        S.line = w->bar_line;
    }
    const unsigned long long gen = S.generation;
    ++S.arrived;
    if (!S.broken && S.arrived + S.exited == S.nblocks) {
        if (S.exited > 0) {
            coop_break(S, coop_exit_deadlock(S));
        } else {
            S.arrived = 0;
            ++S.generation;
            S.cv.notify_all();
            return true;
        }
    }
    while (S.generation == gen && !S.broken) S.cv.wait(lk);
    if (S.generation != gen) return true;
    if (w->error.empty()) w->error = S.why;
    return false;
}

// A block finished (ok) or failed: a grid barrier still waited on can never complete.
void coop_block_done(Launch *L, bool ok, const std::string &error) {
    CoopState &S = *L->coop;
    std::lock_guard<std::mutex> lk(S.mu);
    ++S.exited;
    if (!ok) {
        coop_break(S, "aborted: another block of the cooperative launch failed: " + error);
    } else if (S.arrived > 0 && S.arrived + S.exited == S.nblocks) {
        coop_break(S, coop_exit_deadlock(S));
    }
}

// ---------------------------------------------------------------------------------
// Barriers
void barrier_release_if_complete(Worker *w) {
    if (w->n_at_barrier == 0 || w->n_at_barrier + w->n_exited < w->n) return;
    if (w->n_exited > 0) {
        if (w->L->cfg.exit_policy == 0) {
            w->error = fmt("%u of %u threads of block (%u,%u,%u) exited while the others wait at %s() at %s:%d; "
                           "on a GPU this is undefined behaviour (make every thread reach the barrier, e.g. "
                           "guard the work with `if (i < n)` instead of returning early)",
                           w->n_exited, w->n, w->block.x, w->block.y, w->block.z, bar_name(w->bar_kind),
                           w->bar_file, w->bar_line);
            return;
        }
        ++w->exit_warn;
    }
    if (w->bar_kind == kBarGrid && !coop_wait(w)) return;  // the whole grid, not just this block
    int count = 0;
    for (auto &f : w->fibers)
        if (f.state == AT_BARRIER) count += f.bar_pred;
    unsigned waiting = w->n_at_barrier;
    int result = 0;
    switch (w->bar_kind) {
        case GPUGRAD_BAR_COUNT: result = count; break;
        case GPUGRAD_BAR_AND: result = (unsigned)count == waiting; break;
        case GPUGRAD_BAR_OR: result = count != 0; break;
        default: break;
    }
    for (auto &f : w->fibers)
        if (f.state == AT_BARRIER) {
            f.state = RUNNABLE;
            f.bar_result = result;
        }
    w->n_at_barrier = 0;
    w->bar_first = nullptr;
}

// ---------------------------------------------------------------------------------
// Warp operations
inline Fiber *lane_fiber(Worker *w, unsigned warp, unsigned lane) {
    unsigned i = warp * kWarp + lane;
    return i < w->n ? &w->fibers[i] : nullptr;
}

unsigned long long poison_bits(int size) {
    switch (size) {
        case 1: return 0xffull;
        case 2: return 0x7fffull;                  // half NaN
        case 4: return 0x7fffdeadull;              // float NaN, huge int
        default: return 0x7ff8deaddeaddeadull;     // double NaN
    }
}

bool matches(const Fiber *a, const Fiber *b) {
    return b->state == AT_WARP && a->w_kind == b->w_kind && a->w_mask == b->w_mask &&
           same_site(a->w_file, a->w_line, b->w_file, b->w_line);
}

// If every non-exited lane named in f's mask waits at f's op, compute the results and
// make them runnable. Returns true when the op completed.
bool warp_try_complete(Worker *w, Fiber *f) {
    unsigned warp = f->linear / kWarp;
    if (f->w_kind == GPUGRAD_W_ACTIVEMASK) {
        // complete once every live lane of the warp is here or blocked somewhere else
        unsigned here = 0;
        for (unsigned j = 0; j < kWarp; ++j) {
            Fiber *g = lane_fiber(w, warp, j);
            if (!g || g->state == EXITED) continue;
            if (g->state == RUNNABLE) return false;
            if (matches(f, g)) here |= 1u << j;
        }
        for (unsigned j = 0; j < kWarp; ++j)
            if (here >> j & 1u) {
                Fiber *g = lane_fiber(w, warp, j);
                g->w_result = here;
                g->state = RUNNABLE;
                --w->n_activemask;
            }
        return true;
    }
    Fiber *members[kWarp] = {};
    unsigned present = 0;  // lanes that take part
    for (unsigned j = 0; j < kWarp; ++j) {
        if (!(f->w_mask >> j & 1u)) continue;
        Fiber *g = lane_fiber(w, warp, j);
        if (!g || g->state == EXITED) continue;
        if (!matches(f, g)) return false;
        members[j] = g;
        present |= 1u << j;
    }
    unsigned ballot = 0;
    for (unsigned j = 0; j < kWarp; ++j)
        if (members[j] && members[j]->w_value) ballot |= 1u << j;
    for (unsigned j = 0; j < kWarp; ++j) {
        Fiber *g = members[j];
        if (!g) continue;
        unsigned long long r = 0;
        int width = g->w_width, arg = g->w_arg;
        unsigned seg = j & ~unsigned(width - 1);
        int src = -1;  // -1: own value
        switch (g->w_kind) {
            case GPUGRAD_W_SHFL_IDX: src = (int)(seg + ((unsigned)arg & unsigned(width - 1))); break;
            case GPUGRAD_W_SHFL_UP:
                src = ((j & unsigned(width - 1)) < (unsigned)arg) ? -1 : (int)j - arg;
                break;
            case GPUGRAD_W_SHFL_DOWN:
                src = ((j & unsigned(width - 1)) + (unsigned)arg >= (unsigned)width) ? -1 : (int)j + arg;
                break;
            case GPUGRAD_W_SHFL_XOR: {
                unsigned s = j ^ ((unsigned)arg & 31u);
                src = (s >= seg + (unsigned)width) ? -1 : (int)s;
                break;
            }
            case GPUGRAD_W_BALLOT: r = ballot; break;
            case GPUGRAD_W_ANY: r = ballot != 0; break;
            case GPUGRAD_W_ALL: r = ballot == present; break;
            case GPUGRAD_W_MATCH_ANY:
            case GPUGRAD_W_MATCH_ALL: {
                unsigned m = 0;
                for (unsigned k = 0; k < kWarp; ++k)
                    if (members[k] && members[k]->w_value == g->w_value) m |= 1u << k;
                if (g->w_kind == GPUGRAD_W_MATCH_ANY) {
                    r = m;
                } else {
                    g->w_pred = m == present;
                    r = m == present ? present : 0;
                }
                break;
            }
            default: {  // reductions
                unsigned long long acc = 0;
                bool first = true;
                for (unsigned k = 0; k < kWarp; ++k) {
                    if (!members[k]) continue;
                    unsigned v = (unsigned)members[k]->w_value;
                    unsigned a = (unsigned)acc;
                    if (first) {
                        acc = v;
                        first = false;
                        continue;
                    }
                    switch (g->w_kind) {
                        case GPUGRAD_W_REDUCE_ADD: acc = a + v; break;
                        case GPUGRAD_W_REDUCE_MIN_U: acc = a < v ? a : v; break;
                        case GPUGRAD_W_REDUCE_MAX_U: acc = a > v ? a : v; break;
                        case GPUGRAD_W_REDUCE_MIN_I: acc = (unsigned)((int)a < (int)v ? (int)a : (int)v); break;
                        case GPUGRAD_W_REDUCE_MAX_I: acc = (unsigned)((int)a > (int)v ? (int)a : (int)v); break;
                        case GPUGRAD_W_REDUCE_AND: acc = a & v; break;
                        case GPUGRAD_W_REDUCE_OR: acc = a | v; break;
                        case GPUGRAD_W_REDUCE_XOR: acc = a ^ v; break;
                        default: break;
                    }
                }
                r = acc;
                break;
            }
        }
        if (g->w_kind >= GPUGRAD_W_SHFL_IDX && g->w_kind <= GPUGRAD_W_SHFL_XOR) {
            if (src < 0) {
                r = g->w_value;
            } else if (src < (int)kWarp && members[src]) {
                r = members[src]->w_value;
            } else {
                // the source lane exited, does not exist, or is not named in the mask
                r = poison_bits(g->w_size);
                ++w->poison;
            }
        }
        g->w_result = r;
    }
    for (unsigned j = 0; j < kWarp; ++j)
        if (members[j]) members[j]->state = RUNNABLE;
    return true;
}

// Lanes waiting in __activemask learn their answer when the rest of the warp blocks.
void recheck_activemask(Worker *w, const Fiber *f) {
    if (w->n_activemask == 0) return;
    unsigned warp = f->linear / kWarp;
    for (unsigned j = 0; j < kWarp; ++j) {
        Fiber *g = lane_fiber(w, warp, j);
        if (g && g->state == AT_WARP && g->w_kind == GPUGRAD_W_ACTIVEMASK) {
            warp_try_complete(w, g);
            return;
        }
    }
}

void on_exit(Worker *w, Fiber *f) {
    f->state = EXITED;
    ++w->n_exited;
    barrier_release_if_complete(w);
    // lanes of this warp waiting at a warp op may have been waiting for f
    unsigned warp = f->linear / kWarp;
    for (unsigned j = 0; j < kWarp; ++j) {
        Fiber *g = lane_fiber(w, warp, j);
        if (g && g->state == AT_WARP && (g->w_mask >> (f->linear % kWarp) & 1u)) warp_try_complete(w, g);
    }
    recheck_activemask(w, f);
}

void fiber_main() {
    Worker *w = tw;
    Fiber *f = w->cur;
    asan_finish(w, nullptr);
    w->L->entry(w->L->args);
    on_exit(w, f);
    leave(w, f, true);
    __builtin_trap();  // an exited fiber is never resumed
}

inline unsigned long long splitmix(unsigned long long &x) {
    unsigned long long z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// One line per distinct wait (barrier, or warp op with its site and mask).
void start_round(Worker *w);

std::string describe_waits(Worker *w) {
    struct Group {
        const Fiber *first, *last;
        unsigned count;
    };
    std::vector<Group> groups;
    auto same_wait = [](const Fiber *a, const Fiber *b) {
        if (a->state != b->state) return false;
        return a->state == AT_BARRIER || (a->w_kind == b->w_kind && a->w_mask == b->w_mask &&
                                          same_site(a->w_file, a->w_line, b->w_file, b->w_line));
    };
    for (auto &f : w->fibers) {
        if (f.state == EXITED || f.state == RUNNABLE) continue;
        bool found = false;
        for (auto &g : groups)
            if (same_wait(g.first, &f)) {
                g.last = &f;
                ++g.count;
                found = true;
                break;
            }
        if (!found) groups.push_back({&f, &f, 1});
    }
    std::string s;
    for (size_t i = 0; i < groups.size() && i < 8; ++i) {
        const Group &g = groups[i];
        std::string who = g.count == 1 ? fmt("thread (%u,%u,%u)", g.first->tid.x, g.first->tid.y, g.first->tid.z)
                                       : fmt("%u threads (%u,%u,%u)..(%u,%u,%u)", g.count, g.first->tid.x,
                                             g.first->tid.y, g.first->tid.z, g.last->tid.x, g.last->tid.y,
                                             g.last->tid.z);
        if (g.first->state == AT_BARRIER)
            s += fmt("\n  %s wait at %s() at %s:%d", who.c_str(), bar_name(w->bar_kind), w->bar_file, w->bar_line);
        else
            s += fmt("\n  %s wait at %s(mask=0x%08x) at %s:%d for the lanes of the mask", who.c_str(),
                     warp_name(g.first->w_kind), g.first->w_mask, g.first->w_file, g.first->w_line);
    }
    if (groups.size() > 8) s += "\n  ...";
    return s;
}

// Run one block to completion. Returns false on error (w->error set).
bool run_block(Worker *w, unsigned long long b) {
    Launch *L = w->L;
    uint3 bi;
    bi.x = (unsigned)(b % L->grid.x);
    bi.y = (unsigned)((b / L->grid.x) % L->grid.y);
    bi.z = (unsigned)(b / ((unsigned long long)L->grid.x * L->grid.y));
    w->block = bi;
    gpugrad_emu_ts.bid = bi;
    gpugrad_emu_ts.bdim = L->block;
    gpugrad_emu_ts.gdim = L->grid;
    gpugrad_emu_ts.dyn_smem = w->dyn;
    // why: fresh garbage (NaN for floats) in dynamic shared memory for every block, so a
    // read of memory no thread of this block wrote shows up in the results
    if (w->dyn && L->shmem) std::memset(w->dyn, 0xff, L->shmem);
    w->n_exited = w->n_at_barrier = w->n_activemask = 0;
    w->bar_first = nullptr;
    w->error.clear();
    for (unsigned i = 0; i < w->n; ++i) {
        Fiber &f = w->fibers[i];
        f.state = RUNNABLE;
#if GPUGRAD_ASAN
        // why: a reused stack keeps the redzones of earlier fibers' frames, and the
        // staggered top below may land on them
        __asan_unpoison_memory_region(f.stack, kStackSize);
#endif
        // why the offset: stack tops 260 KiB apart share their L1 cache sets; staggering
        // them by cache lines spreads the fibers' hot frames over all sets (~2x faster)
        ctx_init(&f.ctx, f.stack, kStackSize - (i % 64) * 64 - (i / 64 % 4) * 4096, fiber_main);
    }
    w->rng = L->cfg.seed * 0x9e3779b97f4a7c15ull + b;
    for (unsigned i = 0; i < w->n; ++i) w->order[i] = i;
    start_round(w);
    Fiber *f = next_fiber(w);
    if (f) {
        w->cur = f;
        gpugrad_emu_ts.tid = f->tid;
        ++w->switches;
        w->from_sched = true;
#if GPUGRAD_ASAN
        void *fake = nullptr;
        __sanitizer_start_switch_fiber(&fake, f->stack, kStackSize);
        ctx_swap(&w->sched, &f->ctx);
        __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
        ctx_swap(&w->sched, &f->ctx);
#endif
    }
    return w->error.empty();
}

// A round: every runnable fiber runs once, to its next barrier, warp op or exit, in
// the scheduling order.
void start_round(Worker *w) {
    w->k = 0;
    w->progressed = false;
    if (w->L->cfg.order == 2) {
        auto &ord = w->order;
        for (unsigned i = w->n; i > 1; --i) {
            unsigned j = (unsigned)(splitmix(w->rng) % i);
            std::swap(ord[i - 1], ord[j]);
        }
    }
}

// The next fiber to run; nullptr when the block has finished or failed (deadlock is
// detected here: a whole round in which no fiber could run).
Fiber *next_fiber(Worker *w) {
    if (!w->error.empty()) return nullptr;
    const bool reverse = w->L->cfg.order == 1;
    for (;;) {
        while (w->k < w->n) {
            unsigned i = reverse ? w->n - 1 - w->k : w->order[w->k];
            ++w->k;
            Fiber *f = &w->fibers[i];
            if (f->state == RUNNABLE) {
                w->progressed = true;
                return f;
            }
        }
        if (w->n_exited == w->n) return nullptr;
        if (!w->progressed) {
            w->error = fmt("deadlock in block (%u,%u,%u): no thread can make progress (%u of %u exited)%s",
                           w->block.x, w->block.y, w->block.z, w->n_exited, w->n, describe_waits(w).c_str());
            return nullptr;
        }
        start_round(w);
    }
}

void worker_main(Launch *L, long long fixed_block = -1) {
#if defined(__x86_64__)
    // why MXCSR: CuPy compiles every kernel with -ftz=true, so the GPU flushes float32
    // denormal inputs and results to zero. FTZ (bit 15) + DAZ (bit 6) do the same for
    // SSE arithmetic and compares, but for double too: the Python side asks for it only
    // for kernels without float64 parameters. Restored below (with one worker this is
    // the Python thread, whose NumPy must not flush).
    const unsigned saved_csr = _mm_getcsr();
    if (L->ftz) _mm_setcsr(saved_csr | 0x8040u);
#endif
    Worker w;
    tw = &w;
    w.L = L;
    w.n = L->block.x * L->block.y * L->block.z;
    w.fibers.resize(w.n);
    w.order.resize(w.n);
    bool ok = true;
    for (unsigned i = 0; i < w.n; ++i) {
        Fiber &f = w.fibers[i];
        f.linear = i;
        f.tid.x = i % L->block.x;
        f.tid.y = (i / L->block.x) % L->block.y;
        f.tid.z = i / (L->block.x * L->block.y);
        f.stack = stack_get();
        if (!f.stack) ok = false;
        w.order[i] = i;
    }
    if (L->shmem) {
        void *p = nullptr;
        if (posix_memalign(&p, 128, L->shmem) != 0) ok = false;
        w.dyn = static_cast<char *>(p);
    }
    if (!ok) {
        std::lock_guard<std::mutex> lk(L->mu);
        if (L->error.empty()) L->error = "out of memory allocating fiber stacks / dynamic shared memory";
        L->failed = true;
    }
    unsigned long long blocks = 0;
    bool dirty = false;
    if (fixed_block >= 0) {  // cooperative launch: this OS thread runs exactly this block
        bool done = ok && run_block(&w, (unsigned long long)fixed_block);
        blocks = ok ? 1 : 0;
        if (!done) {
            dirty = true;
            std::lock_guard<std::mutex> lk(L->mu);
            if (L->error.empty()) L->error = ok ? w.error : "out of memory allocating fiber stacks";
            L->failed = true;
        }
        coop_block_done(L, done, w.error);
    }
    while (fixed_block < 0 && ok && !L->failed.load(std::memory_order_relaxed)) {
        unsigned long long b = L->next.fetch_add(1);
        if (b >= L->nblocks) break;
        if (L->subset) b = L->subset[b];
        ++blocks;
        if (!run_block(&w, b)) {
            dirty = true;
            std::lock_guard<std::mutex> lk(L->mu);
            if (L->error.empty()) L->error = w.error;
            L->failed = true;
            break;
        }
    }
    for (auto &f : w.fibers)
        if (f.stack) stack_put(f.stack, dirty);
    free(w.dyn);
    gpugrad_emu_ts.dyn_smem = nullptr;
    tw = nullptr;
    std::lock_guard<std::mutex> lk(L->mu);
    L->stats.blocks += blocks;
    L->stats.threads += blocks * w.n;
    L->stats.poisoned_reads += w.poison;
    L->stats.exit_barrier_warnings += w.exit_warn;
    L->stats.switches += w.switches;
#if defined(__x86_64__)
    _mm_setcsr(saved_csr);
#endif
}

}  // namespace

// ---------------------------------------------------------------------------------
// Called from device code (through cuda_emu.h)

GPUGRAD_EMU_API int gpugrad_emu_barrier(int kind, int pred, const char *file, int line) {
    Worker *w = tw;
    Fiber *f = w ? w->cur : nullptr;
    if (!f) {
        std::fprintf(stderr, "gpugrad emu: %s() called outside a kernel\n", bar_name(kind));
        std::abort();
    }
    if (w->n_at_barrier > 0 && (w->bar_kind != kind || !same_site(w->bar_file, w->bar_line, file, line))) {
        fiber_fail(w, f,
                   fmt("threads of block (%u,%u,%u) wait at different barriers: thread (%u,%u,%u) at %s() at "
                       "%s:%d, thread (%u,%u,%u) at %s() at %s:%d (a barrier in divergent code; on a GPU this "
                       "deadlocks or is undefined behaviour)",
                       w->block.x, w->block.y, w->block.z, w->bar_first->tid.x, w->bar_first->tid.y,
                       w->bar_first->tid.z, bar_name(w->bar_kind), w->bar_file, w->bar_line, f->tid.x, f->tid.y,
                       f->tid.z, bar_name(kind), file, line));
    }
    if (w->n_at_barrier == 0) {
        w->bar_kind = kind;
        w->bar_file = file;
        w->bar_line = line;
        w->bar_first = f;
    }
    f->state = AT_BARRIER;
    f->bar_pred = pred;
    ++w->n_at_barrier;
    barrier_release_if_complete(w);
    recheck_activemask(w, f);
    // why yield even when this thread released the barrier: the next phase then starts
    // in the scheduling order (forward/reverse/random), not with the last arrival
    leave(w, f, false);
    return f->bar_result;
}

GPUGRAD_EMU_API unsigned long long gpugrad_emu_warp_op(int kind, unsigned mask, unsigned long long value, int size,
                                                       int arg, int width, const char *file, int line,
                                                       int *pred_out) {
    Worker *w = tw;
    Fiber *f = w ? w->cur : nullptr;
    if (!f) {
        std::fprintf(stderr, "gpugrad emu: %s() called outside a kernel\n", warp_name(kind));
        std::abort();
    }
    unsigned lane = f->linear % kWarp;
    if (!(mask >> lane & 1u))
        fiber_fail(w, f,
                   fmt("%s at %s:%d: %s (lane %u) called it with mask 0x%08x, which does not include its own "
                       "lane (undefined behaviour on a GPU)",
                       warp_name(kind), file, line, where(w, f).c_str(), lane, mask));
    if (width <= 0 || width > 32 || (width & (width - 1)) != 0)
        fiber_fail(w, f,
                   fmt("%s at %s:%d: width=%d must be a power of 2 in [1, 32] (%s)", warp_name(kind), file, line,
                       width, where(w, f).c_str()));
    f->w_kind = kind;
    f->w_mask = mask;
    f->w_value = value;
    f->w_size = size;
    f->w_arg = arg;
    f->w_width = width;
    f->w_file = file;
    f->w_line = line;
    f->state = AT_WARP;
    if (kind == GPUGRAD_W_ACTIVEMASK) ++w->n_activemask;
    if (!warp_try_complete(w, f)) recheck_activemask(w, f);
    leave(w, f, false);
    if (pred_out) *pred_out = f->w_pred;
    return f->w_result;
}

GPUGRAD_EMU_API void gpugrad_emu_trap(const char *file, int line) {
    Worker *w = tw;
    Fiber *f = w ? w->cur : nullptr;
    if (!f) {
        std::fprintf(stderr, "gpugrad emu: __trap() at %s:%d\n", file, line);
        std::abort();
    }
    fiber_fail(w, f, fmt("__trap() at %s:%d in %s", file, line, where(w, f).c_str()));
}

// Cooperative launch: the grid-wide barrier, and what cooperative_groups asks of it.
GPUGRAD_EMU_API void gpugrad_emu_grid_barrier(const char *file, int line) {
    Worker *w = tw;
    Fiber *f = w ? w->cur : nullptr;
    if (!f) {
        std::fprintf(stderr, "gpugrad emu: grid.sync() called outside a kernel\n");
        std::abort();
    }
    if (!w->L->coop)
        fiber_fail(w, f,
                   fmt("grid-wide barrier (grid.sync) at %s:%d in a kernel that was not launched cooperatively "
                       "(%s): on a GPU this deadlocks or is invalid; build the module with "
                       "enable_cooperative_groups=True, which launches every block at once",
                       file, line, where(w, f).c_str()));
    gpugrad_emu_barrier(kBarGrid, 0, file, line);
}

GPUGRAD_EMU_API int gpugrad_emu_is_cooperative(void) { return tw && tw->L && tw->L->coop ? 1 : 0; }

// __nanosleep: let other OS threads (the other blocks of a cooperative launch) run, so
// that a spin-waiting grid barrier written with atomics makes progress.
GPUGRAD_EMU_API void gpugrad_emu_nanosleep(unsigned ns) {
    (void)ns;
    std::this_thread::yield();
}

// ---------------------------------------------------------------------------------
// Launch API (called from Python through ctypes)

extern "C" __attribute__((visibility("default"))) int gpugrad_emu_abi_version(void) { return 1; }

// For the fork-safety test: hold the stack pool's lock for `ms` milliseconds, as a
// worker thread does while it takes a fiber stack.
extern "C" __attribute__((visibility("default"))) void gpugrad_emu_debug_hold_stacks(unsigned ms) {
    std::lock_guard<std::mutex> lk(g_stack_mu);
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

// Flush float32 denormals (FTZ+DAZ, x86-64 only) in the next gpugrad_emu_launch made
// from this OS thread; the flag is consumed by that launch.
extern "C" __attribute__((visibility("default"))) void gpugrad_emu_set_ftz(int on) { g_next_ftz = on; }

// Run only the `n` listed linear block indices (each < the grid's block count) in the next
// gpugrad_emu_launch from this OS thread (the profiler's sampled blocks; the outputs of the
// other blocks are not written). The list must stay valid until that launch returns.
extern "C" __attribute__((visibility("default"))) void gpugrad_emu_set_block_subset(
    const unsigned long long *blocks, unsigned long long n) {
    g_next_subset = blocks;
    g_next_subset_n = n;
}

namespace {
int launch_impl(void (*entry)(void **), void **args, const unsigned *grid, const unsigned *block,
                unsigned long long shmem, const gpugrad_emu_config *cfg, gpugrad_emu_stats *stats, char *err,
                size_t errlen, bool cooperative) {
    Launch L;
    L.entry = entry;
    L.args = args;
    L.grid.x = grid[0];
    L.grid.y = grid[1];
    L.grid.z = grid[2];
    L.block.x = block[0];
    L.block.y = block[1];
    L.block.z = block[2];
    L.shmem = shmem;
    L.cfg = *cfg;
    L.ftz = g_next_ftz;
    g_next_ftz = 0;
    auto fail = [&](const std::string &m) {
        if (err && errlen) std::snprintf(err, errlen, "%s", m.c_str());
        return 1;
    };
    unsigned long long nthreads = (unsigned long long)block[0] * block[1] * block[2];
    if (nthreads == 0 || nthreads > 1024 || block[0] > 1024 || block[1] > 1024 || block[2] > 64)
        return fail(fmt("invalid block (%u,%u,%u)", block[0], block[1], block[2]));
    if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0 || grid[0] > 0x7fffffffu || grid[1] > 65535 ||
        grid[2] > 65535)
        return fail(fmt("invalid grid (%u,%u,%u)", grid[0], grid[1], grid[2]));
    L.nblocks = (unsigned long long)grid[0] * grid[1] * grid[2];
    if (g_next_subset) {
        for (unsigned long long i = 0; i < g_next_subset_n; ++i)
            if (g_next_subset[i] >= L.nblocks) {
                g_next_subset = nullptr;
                return fail(fmt("block subset: index %llu is outside the grid", g_next_subset[i]));
            }
        L.subset = g_next_subset;
        L.nblocks = g_next_subset_n;
        g_next_subset = nullptr;
        if (L.nblocks == 0) return 0;
    }
    if (L.cfg.order < 0 || L.cfg.order > 2) L.cfg.order = 0;
    unsigned long long nw = L.cfg.workers < 1 ? 1 : (unsigned long long)L.cfg.workers;
    if (nw > L.nblocks) nw = L.nblocks;
    Worker *saved = tw;  // a launch from inside a kernel is not supported; keep state sane anyway
    gpugrad_emu_ts_t saved_ts = gpugrad_emu_ts;
    CoopState coop;
    if (cooperative) {  // every block resident: one OS thread per block (the host checked the size)
        if (L.nblocks > kMaxCoopBlocks)
            return fail(fmt("cooperative launch of %llu blocks: the emulator runs at most %llu (one OS thread "
                            "per block)",
                            L.nblocks, kMaxCoopBlocks));
        coop.nblocks = L.nblocks;
        L.coop = &coop;
        std::vector<std::thread> ts;
        for (unsigned long long i = 0; i < L.nblocks; ++i) ts.emplace_back(worker_main, &L, (long long)i);
        for (auto &t : ts) t.join();
    } else if (nw == 1) {
        worker_main(&L);  // on the calling thread: no thread start-up cost
    } else {
        std::vector<std::thread> ts;
        for (unsigned long long i = 0; i < nw; ++i) ts.emplace_back(worker_main, &L, -1LL);
        for (auto &t : ts) t.join();
    }
    tw = saved;
    gpugrad_emu_ts = saved_ts;
    if (stats) *stats = L.stats;
    if (L.failed) return fail(L.error);
    return 0;
}
}  // namespace

extern "C" __attribute__((visibility("default"))) int gpugrad_emu_launch(
    void (*entry)(void **), void **args, const unsigned *grid, const unsigned *block, unsigned long long shmem,
    const gpugrad_emu_config *cfg, gpugrad_emu_stats *stats, char *err, size_t errlen) {
    return launch_impl(entry, args, grid, block, shmem, cfg, stats, err, errlen, false);
}

// Cooperative launch (cuLaunchCooperativeKernel): every block resident at once, grid
// barriers allowed. The caller checks that the grid fits the emulated GPU.
extern "C" __attribute__((visibility("default"))) int gpugrad_emu_launch_cooperative(
    void (*entry)(void **), void **args, const unsigned *grid, const unsigned *block, unsigned long long shmem,
    const gpugrad_emu_config *cfg, gpugrad_emu_stats *stats, char *err, size_t errlen) {
    return launch_impl(entry, args, grid, block, shmem, cfg, stats, err, errlen, true);
}
