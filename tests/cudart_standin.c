/* A stand-in libcudart.so for tests without a GPU (tests/test_deploy.py builds it with gcc).
 *
 * The CUDA runtime API's C signatures (cuda_runtime_api.h) over host memory: "device" memory is malloc'd
 * and remembered, so a copy whose pointers do not match its cudaMemcpyKind, or a free of an address
 * cudaMalloc did not hand out, fails as the real runtime reports it (cudaError_t codes of driver_types.h).
 * Allocations larger than the environment's STANDIN_CUDART_MAX_BYTES fail with cudaErrorMemoryAllocation.
 * standin_live() and standin_calls() let a test check for leaks and count calls.
 */
#include <stdlib.h>
#include <string.h>

typedef int cudaError_t;
typedef void *cudaStream_t;
enum { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2,
       cudaErrorInvalidDevicePointer = 17, cudaErrorInvalidMemcpyDirection = 21,
       cudaErrorInvalidResourceHandle = 400 };
enum { cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2,
       cudaMemcpyDeviceToDevice = 3 };

#define MAX_LIVE 1024
static void *live[MAX_LIVE];
static size_t sizes[MAX_LIVE];
static int streams, calls;

/* The live allocation holding [p, p + n), or -1. */
static int find(const void *p, size_t n) {
    for (int i = 0; i < MAX_LIVE; i++)
        if (live[i] && (const char *)p >= (char *)live[i] && (const char *)p + n <= (char *)live[i] + sizes[i])
            return i;
    return -1;
}

cudaError_t cudaMalloc(void **devPtr, size_t size) {
    calls++;
    const char *cap = getenv("STANDIN_CUDART_MAX_BYTES");
    if (!devPtr) return cudaErrorInvalidValue;
    if (cap && size > (size_t)strtoull(cap, NULL, 10)) return cudaErrorMemoryAllocation;
    for (int i = 0; i < MAX_LIVE; i++)
        if (!live[i]) {
            live[i] = malloc(size ? size : 1);
            sizes[i] = size;
            *devPtr = live[i];
            return live[i] ? cudaSuccess : cudaErrorMemoryAllocation;
        }
    return cudaErrorMemoryAllocation;
}

cudaError_t cudaFree(void *devPtr) {
    calls++;
    if (!devPtr) return cudaSuccess;
    for (int i = 0; i < MAX_LIVE; i++)
        if (live[i] == devPtr) {
            free(live[i]);
            live[i] = NULL;
            return cudaSuccess;
        }
    return cudaErrorInvalidDevicePointer;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, int kind, cudaStream_t stream) {
    calls++;
    if (!stream) return cudaErrorInvalidResourceHandle;  /* the bundle always uses a stream of its own */
    int dst_dev = find(dst, count) >= 0, src_dev = find(src, count) >= 0;
    if (kind == cudaMemcpyHostToDevice && !(dst_dev && !src_dev)) return cudaErrorInvalidMemcpyDirection;
    if (kind == cudaMemcpyDeviceToHost && !(src_dev && !dst_dev)) return cudaErrorInvalidMemcpyDirection;
    if (kind != cudaMemcpyHostToDevice && kind != cudaMemcpyDeviceToHost) return cudaErrorInvalidMemcpyDirection;
    memcpy(dst, src, count);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, int kind) {
    return cudaMemcpyAsync(dst, src, count, kind, (cudaStream_t)&streams);
}

cudaError_t cudaStreamCreate(cudaStream_t *pStream) {
    calls++;
    if (!pStream) return cudaErrorInvalidValue;
    *pStream = malloc(16);
    streams++;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    calls++;
    return stream ? cudaSuccess : cudaErrorInvalidResourceHandle;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    calls++;
    if (!stream) return cudaErrorInvalidResourceHandle;
    free(stream);
    streams--;
    return cudaSuccess;
}

const char *cudaGetErrorString(cudaError_t error) {
    switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    default: return "unrecognized error code";
    }
}

/* Test hooks: live allocations plus live streams, and the number of runtime calls made. */
int standin_live(void) {
    int n = streams;
    for (int i = 0; i < MAX_LIVE; i++) n += live[i] != NULL;
    return n;
}

int standin_calls(void) { return calls; }
