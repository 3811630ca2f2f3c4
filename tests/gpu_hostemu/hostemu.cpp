// The grid runner of the host emulation (see hostemu.h) and a C entry point per kernel of
// edge/gpu/preprocess.cu, loaded by tests/gpu_hostemu/emulator.py with ctypes.
#include "hostemu.h"

#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include PREPROCESS_CU   // -DPREPROCESS_CU='"/abs/path/edge/gpu/preprocess.cu"'

// Two kernels that test the emulator itself: a block reverses an array through shared memory (wrong
// unless the barrier really waits for every thread's write), and a block whose thread 0 returns
// before a barrier the others reach (must be reported, not run).
__global__ void hostemu_selftest_reverse(const int* in, int* out)
{
    __shared__ int cells[1024];
    const int t = threadIdx.x;
    cells[t] = in[blockIdx.x * blockDim.x + t];
    __syncthreads();
    out[blockIdx.x * blockDim.x + t] = cells[blockDim.x - 1 - t];
}

__global__ void hostemu_selftest_divergent(int* out)
{
    if (threadIdx.x == 0) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}

namespace hostemu {

dim3 thread_idx, block_idx, block_dim, grid_dim;

namespace {

enum State { READY, AT_BARRIER, DONE };

struct Fiber {
    ucontext_t context;
    std::vector<char> stack;
    State state;
};

const size_t kStackBytes = 64 * 1024;
ucontext_t scheduler;
std::vector<Fiber> fibers;
size_t current = 0;
bool barriers_allowed = false;
const std::function<void()>* body = nullptr;
std::string error;

dim3 thread_of(size_t t)
{
    dim3 d;
    d.x = (unsigned int)(t % block_dim.x);
    d.y = (unsigned int)((t / block_dim.x) % block_dim.y);
    d.z = (unsigned int)(t / ((size_t)block_dim.x * block_dim.y));
    return d;
}

void fiber_main()
{
    (*body)();
    fibers[current].state = DONE;   // returning resumes the scheduler (uc_link)
}

// Run one block as fibers: each pass resumes every live thread until it reaches a barrier or ends.
bool run_block_with_barriers(size_t threads)
{
    if (fibers.size() < threads) fibers.resize(threads);
    for (size_t t = 0; t < threads; ++t) {
        Fiber& f = fibers[t];
        if (f.stack.empty()) f.stack.resize(kStackBytes);
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = f.stack.data();
        f.context.uc_stack.ss_size = f.stack.size();
        f.context.uc_link = &scheduler;
        makecontext(&f.context, fiber_main, 0);
        f.state = READY;
    }
    for (;;) {
        size_t waiting = 0, done = 0;
        for (size_t t = 0; t < threads; ++t) {
            if (fibers[t].state == DONE) continue;
            current = t;
            thread_idx = thread_of(t);
            fibers[t].state = READY;
            swapcontext(&scheduler, &fibers[t].context);
        }
        for (size_t t = 0; t < threads; ++t) {
            if (fibers[t].state == DONE) ++done;
            else if (fibers[t].state == AT_BARRIER) ++waiting;
        }
        if (done == threads) return true;
        if (done > 0) {
            error = "__syncthreads() reached by " + std::to_string(waiting) + " of " +
                    std::to_string(threads) + " threads of a block (the others returned)";
            return false;
        }
    }
}

}  // namespace

void syncthreads()
{
    if (!barriers_allowed) {
        std::fprintf(stderr, "hostemu: __syncthreads() in a kernel launched without barrier support\n");
        std::abort();
    }
    fibers[current].state = AT_BARRIER;
    swapcontext(&fibers[current].context, &scheduler);
}

// Run a grid. `with_barriers`: the kernel calls __syncthreads(), so its blocks run as fibers.
int launch(const unsigned int* grid, const unsigned int* block, bool with_barriers, const std::function<void()>& kernel)
{
    error.clear();
    grid_dim = dim3{grid[0], grid[1], grid[2]};
    block_dim = dim3{block[0], block[1], block[2]};
    const size_t threads = (size_t)block[0] * block[1] * block[2];
    if (threads == 0 || threads > 1024) { error = "block of " + std::to_string(threads) + " threads"; return 1; }
    body = &kernel;
    barriers_allowed = with_barriers;
    for (unsigned int bz = 0; bz < grid[2]; ++bz)
        for (unsigned int by = 0; by < grid[1]; ++by)
            for (unsigned int bx = 0; bx < grid[0]; ++bx) {
                block_idx = dim3{bx, by, bz};
                if (with_barriers) {
                    if (!run_block_with_barriers(threads)) return 1;
                } else {
                    for (size_t t = 0; t < threads; ++t) { thread_idx = thread_of(t); kernel(); }
                }
            }
    return 0;
}

}  // namespace hostemu

extern "C" {

const char* hostemu_last_error() { return hostemu::error.c_str(); }

int hostemu_re_roi_counts(const unsigned int* grid, const unsigned int* block, const unsigned char* src,
                          int pitch, int width, int height, int channels, int measure, int threshold,
                          int rgb_map, unsigned int* row_count, unsigned int* col_count)
{
    return hostemu::launch(grid, block, true, [=] {
        re_roi_counts(src, pitch, width, height, channels, measure, threshold, rgb_map, row_count, col_count);
    });
}

int hostemu_re_roi_plan(const unsigned int* grid, const unsigned int* block, const unsigned int* row_count,
                        const unsigned int* col_count, int width, int height, int roi_kind, int out_w,
                        int out_h, int interp, double band_threshold, double margin, double fraction,
                        int* plan, int* xtab, int* ytab)
{
    return hostemu::launch(grid, block, true, [=] {
        re_roi_plan(row_count, col_count, width, height, roi_kind, out_w, out_h, interp, band_threshold, margin,
                    fraction, plan, xtab, ytab);
    });
}

int hostemu_re_resize_normalize(const unsigned int* grid, const unsigned int* block, const unsigned char* src,
                                int pitch, int channels, const int* plan, const int* xtab, const int* ytab,
                                void* out, int out_w, int out_h, int out_half, int chan_map, int out_channels,
                                float scale, float mean0, float mean1, float mean2, float std0, float std1,
                                float std2)
{
    return hostemu::launch(grid, block, false, [=] {
        re_resize_normalize(src, pitch, channels, plan, xtab, ytab, out, out_w, out_h, out_half, chan_map,
                            out_channels, scale, mean0, mean1, mean2, std0, std1, std2);
    });
}

int hostemu_selftest(const unsigned int* grid, const unsigned int* block, int divergent, const int* in, int* out)
{
    if (divergent) return hostemu::launch(grid, block, true, [=] { hostemu_selftest_divergent(out); });
    return hostemu::launch(grid, block, true, [=] { hostemu_selftest_reverse(in, out); });
}

// The kernel's float -> half conversion over an array, for an exhaustive check against numpy.
void hostemu_f32_to_f16(const float* in, unsigned short* out, long long n)
{
    for (long long i = 0; i < n; ++i) out[i] = re_f32_to_f16(in[i]);
}

}  // extern "C"
