// The bundle's preprocessing rule on the GPU: edge/preprocess.py (the reference) reproduced bit for bit.
//
//   uint8 HWC image (RGB, BGR or grey; any size; any row pitch)
//   -> region of interest                re_roi_counts (per row/column: bright pixels for the fundus disc,
//                                          grey sums per row for the retina band; a block reduction)
//                                        + re_roi_plan (the box, the padded square, the resize taps; the
//                                          centre square and the whole frame need no counts)
//   -> square padding, never built: the resize indexes into it (black outside the crop)
//   -> cv2.resize (INTER_AREA, INTER_LINEAR or INTER_NEAREST on uint8, OpenCV 4.x's arithmetic), of
//      the colour image or of its grey (COLOR_RGB2GRAY, computed per tap) for a one-channel network
//   -> manifest colour order -> scale, mean/std -> NCHW float32 or float16 at a batch slot
//                                        re_resize_normalize
//
// Up to three launches per image on one stream; the host never waits in between. Plain C++14 device
// code with no includes, so it compiles with nvcc -c, with pycuda (the Jetson's own CUDA 10.2 at
// run time), with NVRTC (CuPy RawModule) and, under tests/gpu_hostemu's shim, with g++ for the
// host emulation the unit tests run. Rules that keep those builds faithful:
//   - every floating-point step is an explicit round-to-nearest intrinsic (__fmul_rn, __dadd_rn,
//     ...), so no compiler fuses a*b+c into an FMA the CPU reference does not do;
//   - barriers are reached by every thread of a block (no early return before one);
//   - no warp intrinsics: reductions go through shared memory.
// OpenCV facts: modules/imgproc/src/resize.cpp of OpenCV 4.6.0 (hal::resize, computeResizeAreaTab,
// ResizeArea_Invoker, resizeAreaFast_Invoker, VResizeLinear<uchar,...>, resizeNN) and
// core/fast_math.hpp (cvRound rounds half to even on x86-64 and ARM).

#define RE_ROI_THREADS 256      // threads per block of re_roi_counts (a multiple of 32)
#define RE_ROI_ROWS 32          // rows per block of re_roi_counts: one bit each in a 32-bit mask
#define RE_PLAN_THREADS 256     // threads of the single block of re_roi_plan

// manifest codes (edge/gpu/preprocess.py holds the same numbers)
#define RE_ROI_NONE 0
#define RE_ROI_FUNDUS 1
#define RE_ROI_BAND 2           // retina_band
#define RE_ROI_CENTRE 3
#define RE_MEASURE_BRIGHT 0     // re_roi_counts: pixels whose brightest channel > threshold, per row and column
#define RE_MEASURE_GREY 1       // re_roi_counts: sum of the grey values per row
#define RE_INTERP_NEAREST 0
#define RE_INTERP_LINEAR 1
#define RE_INTERP_AREA 2

// how a frame is resized, chosen per frame once the square's side is known (as hal::resize does)
#define RE_MODE_NEAREST 0       // resizeNN; also the plain copy when the side equals the output size
#define RE_MODE_LINEAR 1        // fixed-point bilinear (INTER_LINEAR, and INTER_AREA when enlarging)
#define RE_MODE_AREA 2          // ResizeArea_Invoker: float weights over the covered cells
#define RE_MODE_AREA_FAST 3     // resizeAreaFast_Invoker: integer scale factors

// plan: ints written by re_roi_plan, read by re_resize_normalize (and by the tests)
#define RE_PLAN_X0 0            // crop in the source, exclusive ends
#define RE_PLAN_Y0 1
#define RE_PLAN_X1 2
#define RE_PLAN_Y1 3
#define RE_PLAN_SIDE 4          // the padded square's side; square (py, px) = crop (py - top, px - left)
#define RE_PLAN_TOP 5
#define RE_PLAN_LEFT 6
#define RE_PLAN_FOUND 7         // 1: the rule cropped (disc, band, centre square); 0: the whole frame
#define RE_PLAN_MODE 8
#define RE_PLAN_ISCALE_X 9
#define RE_PLAN_ISCALE_Y 10
#define RE_PLAN_INTS 16
#define RE_TAB_INTS 8           // ints per output column (x table) or row (y table)

// The disc rule of edge.preprocess.find_fundus_disc in integers: a row belongs to the disc when
// mean(bright) > 0.02, i.e. count / width > 0.02 in float64. For width < 2^31 that is exactly
// 50 * count > width: count / width differs from 1/50 by at least 1/(50 width), far more than the
// rounding of either side.
#define RE_LINE_DENOMINATOR 50

__device__ __forceinline__ int re_floor_d(double v) { return (int)floor(v); }
__device__ __forceinline__ int re_ceil_d(double v) { return (int)ceil(v); }
__device__ __forceinline__ int re_clip(int v, int lo, int hi) { return v < lo ? lo : (v >= hi ? hi - 1 : v); }
__device__ __forceinline__ unsigned char re_sat_u8(int v) { return (unsigned char)(v < 0 ? 0 : (v > 255 ? 255 : v)); }

// float -> IEEE binary16 bits, round to nearest even (numpy's astype(float16)); integer-only, so
// the GPU and the host emulation run the same instructions and no cuda_fp16.h is needed.
__device__ __forceinline__ unsigned short re_f32_to_f16(float f)
{
    unsigned int x = __float_as_uint(f);
    unsigned int sign = (x >> 16) & 0x8000u, a = x & 0x7fffffffu;
    if (a >= 0x7f800000u) return (unsigned short)(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u));
    if (a >= 0x47800000u) return (unsigned short)(sign | 0x7c00u);        // >= 65536: infinity
    if (a < 0x38800000u) {                                                 // half subnormal or zero
        if (a < 0x33000000u) return (unsigned short)sign;                  // <= 2^-25: zero
        unsigned int e = a >> 23, m = (a & 0x7fffffu) | 0x800000u, shift = 126u - e;
        unsigned int h = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (h & 1u))) ++h;
        return (unsigned short)(sign | h);
    }
    unsigned int h = (a - 0x38000000u) >> 13, rem = a & 0x1fffu;         // rebias 127 -> 15
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;               // may carry into infinity
    return (unsigned short)(sign | h);
}

// OpenCV's COLOR_RGB2GRAY on uint8 (RGB2Gray<uchar> of imgproc/src/color_rgb.simd.hpp, 15-bit weights
// that sum to 2^15, so a grey pixel keeps its value); checked against cv2 4.6 and 5.0 on all 2^24 triples.
// rgb_map: bits 0-1 / 2-3 / 4-5 = the source channel holding R / G / B.
__device__ __forceinline__ int re_grey(const unsigned char* p, int channels, int rgb_map)
{
    if (channels == 1) return p[0];
    return (p[rgb_map & 3] * 9798 + p[(rgb_map >> 2) & 3] * 19235 + p[(rgb_map >> 4) & 3] * 3735 + 16384) >> 15;
}

// ---- 1. bright pixels per row and per column, or grey sums per row ------------------------------------------------------
// Grid (ceil(width / RE_ROI_THREADS), ceil(height / RE_ROI_ROWS)); row_count/col_count zeroed first.
// Each thread walks one column of a 32-row strip (coalesced loads). RE_MEASURE_BRIGHT: it keeps its
// bright rows as bits and adds its column count atomically; RE_MEASURE_GREY: it keeps its 32 grey
// values in shared memory (col_count unused). The block then adds up each row through shared memory.
// Row sums are exact integers (at most 255 x width), as numpy's float64 sum of the grey row is.
extern "C" __global__ void re_roi_counts(const unsigned char* src, int pitch, int width, int height,
                                         int channels, int measure, int threshold, int rgb_map,
                                         unsigned int* row_count, unsigned int* col_count)
{
    __shared__ unsigned int bits[RE_ROI_THREADS];
    __shared__ unsigned char grey[RE_ROI_ROWS][RE_ROI_THREADS + 4];   // + 4: rows a bank apart
    __shared__ unsigned int partial[RE_ROI_THREADS / 32][32];
    const int tid = threadIdx.x;
    const int x = blockIdx.x * RE_ROI_THREADS + tid;
    const int y0 = blockIdx.y * RE_ROI_ROWS;
    const int rows = x < width ? min(RE_ROI_ROWS, height - y0) : 0;
    unsigned int mask = 0u, column = 0u;
    const unsigned char* p = src + (size_t)y0 * pitch + (size_t)x * channels;
    if (measure == RE_MEASURE_GREY) {
        for (int r = 0; r < RE_ROI_ROWS; ++r, p += pitch)
            grey[r][tid] = (unsigned char)(r < rows ? re_grey(p, channels, rgb_map) : 0);
    } else {
        for (int r = 0; r < rows; ++r, p += pitch) {
            int v = p[0];
            if (channels == 3) v = max(v, max((int)p[1], (int)p[2]));   // the same max for RGB and BGR
            if (v > threshold) { mask |= 1u << r; ++column; }
        }
        if (column) atomicAdd(&col_count[x], column);
    }
    bits[tid] = mask;
    __syncthreads();
    {   // thread (chunk, r) adds up row r over the 32 columns of its chunk
        const int r = tid & 31, chunk = tid >> 5;
        unsigned int n = 0u;
        if (measure == RE_MEASURE_GREY)
            for (int t = 0; t < 32; ++t) n += grey[r][chunk * 32 + t];
        else
            for (int t = 0; t < 32; ++t) n += (bits[chunk * 32 + t] >> r) & 1u;
        partial[chunk][r] = n;
    }
    __syncthreads();
    if (tid < 32 && y0 + tid < height) {
        unsigned int n = 0u;
        for (int c = 0; c < RE_ROI_THREADS / 32; ++c) n += partial[c][tid];
        if (n) atomicAdd(&row_count[y0 + tid], n);
    }
}

// ---- 2. the plan: box, square, resize mode and taps ----------------------------------------------
// computeResizeAreaTab for one output index: the covered source cells [fsx1, fsx1 + scale).
__device__ void re_area_entry(int d, int size, double scale, int* e)
{
    const double fsx1 = __dmul_rn((double)d, scale);
    const double fsx2 = __dadd_rn(fsx1, scale);
    const double cell = fmin(scale, __dsub_rn((double)size, fsx1));
    int sx1 = re_ceil_d(fsx1), sx2 = re_floor_d(fsx2);
    sx2 = min(sx2, size - 1);
    sx1 = min(sx1, sx2);
    const int first = __dsub_rn((double)sx1, fsx1) > 1e-3;
    const int last = __dsub_rn(fsx2, (double)sx2) > 1e-3;
    e[0] = first ? sx1 - 1 : sx1;
    e[1] = first + (sx2 - sx1) + last;
    e[2] = first | (last << 1);
    e[3] = __float_as_int(__double2float_rn(__ddiv_rn(__dsub_rn((double)sx1, fsx1), cell)));
    e[4] = __float_as_int(__double2float_rn(__ddiv_rn(1.0, cell)));
    e[5] = __float_as_int(__double2float_rn(
        __ddiv_rn(fmin(fmin(__dsub_rn(fsx2, (double)sx2), 1.0), cell), cell)));
}

// hal::resize's bilinear coefficients (ksize 2) for one output index, as 11-bit fixed point.
__device__ void re_linear_entry(int d, int size, double scale, double inv_scale, int area_mode, int is_x, int* e)
{
    int s;
    float f;
    if (!area_mode) {
        f = __double2float_rn(__dsub_rn(__dmul_rn(__dadd_rn((double)d, 0.5), scale), 0.5));
        s = (int)floorf(f);
        f = __fsub_rn(f, (float)s);
    } else {
        s = re_floor_d(__dmul_rn((double)d, scale));
        f = __double2float_rn(__dsub_rn((double)(d + 1), __dmul_rn((double)(s + 1), inv_scale)));
        f = f <= 0.f ? 0.f : __fsub_rn(f, floorf(f));
    }
    if (is_x) {                       // columns: clamp the tap itself (the fx = 0 edge rules)
        if (s < 0) { f = 0.f; s = 0; }
        if (s >= size - 1) { f = 0.f; s = size - 1; }
        e[0] = s;
        e[1] = min(s + 1, size - 1);  // weight 0 at the right edge; clamped only to stay in bounds
    } else {                          // rows: keep the weights, clip the rows (resizeGeneric_Invoker)
        e[0] = re_clip(s, 0, size);
        e[1] = re_clip(s + 1, 0, size);
    }
    e[2] = __float2int_rn(__fmul_rn(__fsub_rn(1.f, f), 2048.f));   // saturate_cast<short>(cbuf * 2048)
    e[3] = __float2int_rn(__fmul_rn(f, 2048.f));
}

__device__ void re_axis_entry(int mode, int d, int size, int out, int iscale, int area_mode, int is_x, int* e)
{
    const double inv_scale = __ddiv_rn((double)out, (double)size);     // cv::resize: dsize / ssize
    const double scale = __ddiv_rn(1.0, inv_scale);                     // hal::resize: 1 / inv_scale
    if (mode == RE_MODE_AREA) re_area_entry(d, size, scale, e);
    else if (mode == RE_MODE_LINEAR) re_linear_entry(d, size, scale, inv_scale, area_mode, is_x, e);
    else if (mode == RE_MODE_AREA_FAST) { e[0] = d * iscale; e[1] = iscale; }
    else e[0] = min(re_floor_d(__dmul_rn((double)d, scale)), size - 1);  // resizeNN: floor(d * (1/fx))
}

// Is row/column `line` (its count from re_roi_counts) part of the region? The fundus disc: more than 2 %
// of `across` pixels bright (see RE_LINE_DENOMINATOR). The retina band: its mean grey value, numpy's
// float64 sum / width (exact sum, one rounded division), above the threshold.
__device__ __forceinline__ int re_line_in(int roi_kind, unsigned int count, int across, double band_threshold)
{
    if (roi_kind == RE_ROI_BAND) return __ddiv_rn((double)count, (double)across) > band_threshold;
    return (long long)RE_LINE_DENOMINATOR * count > across;
}

// The crop [x0, x1) x [y0, y1) from the lines found (box: first row, last row, first column, last column;
// -1 when none), as edge.preprocess's ROI_FINDERS computes it; returns 1 when a region was found.
__device__ int re_crop(int roi_kind, const int* box, int width, int height, double margin, double fraction, int* c)
{
    c[0] = 0; c[1] = 0; c[2] = width; c[3] = height;
    if (roi_kind == RE_ROI_FUNDUS && box[1] >= 0 && box[3] >= 0) {
        const long long area = (long long)(box[1] + 1 - box[0]) * (box[3] + 1 - box[2]);
        // Python's `area < 0.1 * h * w`: two float64 products, then an exact int/float compare
        const double limit = __dmul_rn(__dmul_rn(0.1, (double)height), (double)width);
        if ((double)area < limit) return 0;
        c[0] = box[2]; c[1] = box[0]; c[2] = box[3] + 1; c[3] = box[1] + 1;
        return 1;
    }
    if (roi_kind == RE_ROI_BAND && box[1] >= 0) {     // floor(margin * band rows) more each side, clamped
        const int extra = re_floor_d(__dmul_rn(margin, (double)(box[1] + 1 - box[0])));
        c[1] = max(0, box[0] - extra); c[3] = min(height, box[1] + 1 + extra);
        return 1;
    }
    if (roi_kind == RE_ROI_CENTRE) {                  // max(1, min(m, floor(fraction * m))), m = min(h, w)
        const int shorter = min(width, height);
        const int side = max(1, min(shorter, re_floor_d(__dmul_rn(fraction, (double)shorter))));
        c[0] = (width - side) / 2; c[1] = (height - side) / 2; c[2] = c[0] + side; c[3] = c[1] + side;
        return 1;
    }
    return 0;
}

// One block of RE_PLAN_THREADS threads. Finds the region's lines (fundus disc, retina band), the crop
// (or the whole frame), the square, the resize mode OpenCV would take for it, and the per-column /
// per-row taps.
extern "C" __global__ void re_roi_plan(const unsigned int* row_count, const unsigned int* col_count,
                                       int width, int height, int roi_kind, int out_w, int out_h,
                                       int interp, double band_threshold, double margin, double fraction,
                                       int* plan, int* xtab, int* ytab)
{
    __shared__ int box[4];            // first row, last row, first column, last column
    const int tid = threadIdx.x;
    if (tid == 0) { box[0] = height; box[1] = -1; box[2] = width; box[3] = -1; }
    __syncthreads();
    if (roi_kind == RE_ROI_FUNDUS || roi_kind == RE_ROI_BAND) {
        int lo = height, hi = -1;
        for (int y = tid; y < height; y += blockDim.x)
            if (re_line_in(roi_kind, row_count[y], width, band_threshold)) { lo = min(lo, y); hi = max(hi, y); }
        if (hi >= 0) { atomicMin(&box[0], lo); atomicMax(&box[1], hi); }
    }
    if (roi_kind == RE_ROI_FUNDUS) {
        int lo = width, hi = -1;
        for (int x = tid; x < width; x += blockDim.x)
            if (re_line_in(roi_kind, col_count[x], height, band_threshold)) { lo = min(lo, x); hi = max(hi, x); }
        if (hi >= 0) { atomicMin(&box[2], lo); atomicMax(&box[3], hi); }
    }
    __syncthreads();
    // every thread derives the same plan from the shared box
    int crop[4];
    const int found = re_crop(roi_kind, box, width, height, margin, fraction, crop);
    const int x0 = crop[0], y0 = crop[1], x1 = crop[2], y1 = crop[3];
    const int cw = x1 - x0, ch = y1 - y0, side = max(cw, ch);
    // hal::resize's choice of path for a side x side -> out_h x out_w resize
    const double scale_x = __ddiv_rn(1.0, __ddiv_rn((double)out_w, (double)side));
    const double scale_y = __ddiv_rn(1.0, __ddiv_rn((double)out_h, (double)side));
    const int iscale_x = __double2int_rn(scale_x), iscale_y = __double2int_rn(scale_y);
    const double eps = 2.220446049250313e-16;                           // DBL_EPSILON
    const int area_fast = fabs(scale_x - iscale_x) < eps && fabs(scale_y - iscale_y) < eps;
    int mode = RE_MODE_NEAREST, area_mode = 0;
    if (side == out_w && side == out_h) mode = RE_MODE_NEAREST;        // cv::resize copies
    else if (interp == RE_INTERP_LINEAR)
        mode = (area_fast && iscale_x == 2 && iscale_y == 2) ? RE_MODE_AREA_FAST : RE_MODE_LINEAR;
    else if (interp == RE_INTERP_AREA) {
        if (scale_x >= 1.0 && scale_y >= 1.0) mode = area_fast ? RE_MODE_AREA_FAST : RE_MODE_AREA;
        else { mode = RE_MODE_LINEAR; area_mode = 1; }
    }
    if (tid == 0) {
        plan[RE_PLAN_X0] = x0; plan[RE_PLAN_Y0] = y0; plan[RE_PLAN_X1] = x1; plan[RE_PLAN_Y1] = y1;
        plan[RE_PLAN_SIDE] = side; plan[RE_PLAN_TOP] = (side - ch) / 2; plan[RE_PLAN_LEFT] = (side - cw) / 2;
        plan[RE_PLAN_FOUND] = found; plan[RE_PLAN_MODE] = mode;
        plan[RE_PLAN_ISCALE_X] = iscale_x; plan[RE_PLAN_ISCALE_Y] = iscale_y;
    }
    for (int d = tid; d < out_w; d += blockDim.x)
        re_axis_entry(mode, d, side, out_w, iscale_x, area_mode, 1, xtab + d * RE_TAB_INTS);
    for (int d = tid; d < out_h; d += blockDim.x)
        re_axis_entry(mode, d, side, out_h, iscale_y, area_mode, 0, ytab + d * RE_TAB_INTS);
}

// ---- 3. resize + colour order + normalise ----------------------------------------------------------
// The padded square, read in place: square row sy / column sx -> source pixel, or black.
// grey: a one-channel network reads each pixel's COLOR_RGB2GRAY (rgb_map says where R, G, B are).
struct ReSquare {
    const unsigned char* src;
    int pitch, channels, x0, y0, cw, ch, top, left, grey, rgb_map;

    __device__ int at(const unsigned char* row, int o, int c) const   // channel c of the pixel at row + o
    {
        return grey ? re_grey(row + o, channels, rgb_map) : row[o + c];
    }

    __device__ const unsigned char* row(int sy) const      // null for a padding row
    {
        const int cy = sy - top;
        return (cy < 0 || cy >= ch) ? (const unsigned char*)0 : src + (size_t)(y0 + cy) * pitch;
    }
    __device__ int offset(int sx) const                     // -1 for a padding column
    {
        const int cx = sx - left;
        return (cx < 0 || cx >= cw) ? -1 : (x0 + cx) * channels;
    }
};

// INTER_AREA, non-integer scale: per covered source row, buf = sum of pixel * alpha over the row's
// taps (left to right); sum = beta_0 * buf_0, then sum += beta_j * buf_j; round half to even.
// Padding contributes exact zeros, so padding taps are skipped without changing a bit.
__device__ void re_area_pixel(const ReSquare& sq, const int* ex, const int* ey, int nc, unsigned char* px)
{
    float sum[3] = {0.f, 0.f, 0.f};
    for (int j = 0; j < ey[1]; ++j) {
        const float beta = __int_as_float((j == 0 && (ey[2] & 1)) ? ey[3] : (j == ey[1] - 1 && (ey[2] & 2)) ? ey[5] : ey[4]);
        const unsigned char* row = sq.row(ey[0] + j);
        if (!row) continue;
        float buf[3] = {0.f, 0.f, 0.f};
        for (int k = 0; k < ex[1]; ++k) {
            const int o = sq.offset(ex[0] + k);
            if (o < 0) continue;
            const float alpha = __int_as_float((k == 0 && (ex[2] & 1)) ? ex[3] : (k == ex[1] - 1 && (ex[2] & 2)) ? ex[5] : ex[4]);
            for (int c = 0; c < nc; ++c) buf[c] = __fadd_rn(buf[c], __fmul_rn((float)sq.at(row, o, c), alpha));
        }
        for (int c = 0; c < nc; ++c) sum[c] = __fadd_rn(sum[c], __fmul_rn(beta, buf[c]));
    }
    for (int c = 0; c < nc; ++c) px[c] = re_sat_u8(__float2int_rn(sum[c]));
}

// INTER_AREA, integer scale: an integer sum; 2x2 is (sum + 2) >> 2, others round(sum * (1.f / area)).
__device__ void re_area_fast_pixel(const ReSquare& sq, const int* ex, const int* ey, int nc, unsigned char* px)
{
    int sum[3] = {0, 0, 0};
    for (int j = 0; j < ey[1]; ++j) {
        const unsigned char* row = sq.row(ey[0] + j);
        if (!row) continue;
        for (int k = 0; k < ex[1]; ++k) {
            const int o = sq.offset(ex[0] + k);
            if (o >= 0) for (int c = 0; c < nc; ++c) sum[c] += sq.at(row, o, c);
        }
    }
    const int area = ex[1] * ey[1];
    const float inv_area = __fdiv_rn(1.f, (float)area);
    for (int c = 0; c < nc; ++c)
        px[c] = (area == 4 && ex[1] == 2) ? (unsigned char)((sum[c] + 2) >> 2)
                                          : re_sat_u8(__float2int_rn(__fmul_rn((float)sum[c], inv_area)));
}

// Fixed-point bilinear: horizontal ints S*a0 + S'*a1, then VResizeLinear's
// ((b0 * (h0 >> 4)) >> 16) + ((b1 * (h1 >> 4)) >> 16) + 2) >> 2 (its SIMD and scalar forms agree).
__device__ void re_linear_pixel(const ReSquare& sq, const int* ex, const int* ey, int nc, unsigned char* px)
{
    const int o0 = sq.offset(ex[0]), o1 = sq.offset(ex[1]);
    const unsigned char* rows[2] = {sq.row(ey[0]), sq.row(ey[1])};
    int h[2][3];
    for (int r = 0; r < 2; ++r)
        for (int c = 0; c < nc; ++c) {
            const int p0 = (rows[r] && o0 >= 0) ? sq.at(rows[r], o0, c) : 0;
            const int p1 = (rows[r] && o1 >= 0) ? sq.at(rows[r], o1, c) : 0;
            h[r][c] = p0 * ex[2] + p1 * ex[3];
        }
    for (int c = 0; c < nc; ++c)
        px[c] = re_sat_u8((((ey[2] * (h[0][c] >> 4)) >> 16) + ((ey[3] * (h[1][c] >> 4)) >> 16) + 2) >> 2);
}

__device__ void re_nearest_pixel(const ReSquare& sq, const int* ex, const int* ey, int nc, unsigned char* px)
{
    const unsigned char* row = sq.row(ey[0]);
    const int o = sq.offset(ex[0]);
    for (int c = 0; c < nc; ++c) px[c] = (row && o >= 0) ? (unsigned char)sq.at(row, o, c) : (unsigned char)0;
}

// Grid (ceil(out_w / blockDim.x), ceil(out_h / blockDim.y)); one thread per output pixel, all channels.
// chan_map: bits 2c..2c+1 = the source channel of output channel c (colour orders folded in by the host);
// for out_channels 1 (GREY) the source channels of R, G and B.
// out: this image's slot (NCHW, out_channels x out_h x out_w) of float32 (out_half 0) or float16 (1).
extern "C" __global__ void re_resize_normalize(const unsigned char* src, int pitch, int channels,
                                               const int* plan, const int* xtab, const int* ytab,
                                               void* out, int out_w, int out_h, int out_half, int chan_map,
                                               int out_channels, float scale, float mean0, float mean1, float mean2,
                                               float std0, float std1, float std2)
{
    const int dx = blockIdx.x * blockDim.x + threadIdx.x;
    const int dy = blockIdx.y * blockDim.y + threadIdx.y;
    if (dx >= out_w || dy >= out_h) return;
    ReSquare sq;
    sq.src = src; sq.pitch = pitch; sq.channels = channels;
    sq.x0 = plan[RE_PLAN_X0]; sq.y0 = plan[RE_PLAN_Y0];
    sq.cw = plan[RE_PLAN_X1] - sq.x0; sq.ch = plan[RE_PLAN_Y1] - sq.y0;
    sq.top = plan[RE_PLAN_TOP]; sq.left = plan[RE_PLAN_LEFT];
    sq.grey = out_channels == 1 && channels == 3; sq.rgb_map = chan_map;
    const int* ex = xtab + dx * RE_TAB_INTS;
    const int* ey = ytab + dy * RE_TAB_INTS;
    // grey is resized once: a grey image's three channels are equal, and a GREY network takes one
    const int nc = (channels == 1 || out_channels == 1) ? 1 : 3;
    unsigned char px[3] = {0, 0, 0};
    const int mode = plan[RE_PLAN_MODE];
    if (mode == RE_MODE_AREA) re_area_pixel(sq, ex, ey, nc, px);
    else if (mode == RE_MODE_AREA_FAST) re_area_fast_pixel(sq, ex, ey, nc, px);
    else if (mode == RE_MODE_LINEAR) re_linear_pixel(sq, ex, ey, nc, px);
    else re_nearest_pixel(sq, ex, ey, nc, px);

    const float mean[3] = {mean0, mean1, mean2}, stdv[3] = {std0, std1, std2};
    const size_t plane = (size_t)out_w * out_h, at = (size_t)dy * out_w + dx;
    for (int c = 0; c < out_channels; ++c) {
        const int s = nc == 1 ? 0 : (chan_map >> (2 * c)) & 3;
        // numpy's order: x * float32(scale), then -= mean, then /= std, each rounded to float32
        const float v = __fdiv_rn(__fsub_rn(__fmul_rn((float)px[s], scale), mean[c]), stdv[c]);
        if (out_half) ((unsigned short*)out)[c * plane + at] = re_f32_to_f16(v);
        else ((float*)out)[c * plane + at] = v;
    }
}
