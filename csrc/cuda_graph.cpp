// CUDA graph capture and replay for whole training steps, through ATen's at::cuda::CUDAGraph.
//
// Why: a CPnet training step on a GPU launches ~1000 small kernels, and the host cannot enqueue
// them as fast as an H100 runs them; replaying a captured graph costs one launch. tch does not
// wrap CUDAGraph, so this file exposes the four calls we need with a C ABI. Errors (c10::Error and
// anything else) come back as malloc'ed strings; the caller frees them with cpw_free_error.
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <string>

namespace {
struct Graph {
  at::cuda::CUDAGraph graph;
  std::optional<c10::cuda::CUDAStream> previous;
};

char* dup_error(const char* what) {
  char* out = static_cast<char*>(std::malloc(std::strlen(what) + 1));
  if (out) std::strcpy(out, what);
  return out;
}

template <typename F>
char* guarded(F f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error& e) {
    return dup_error(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return dup_error(e.what());
  } catch (...) {
    return dup_error("unknown C++ exception");
  }
}
}  // namespace

extern "C" {

void* cpw_graph_new() {
  try {
    return new Graph();
  } catch (...) {
    return nullptr;
  }
}

// Makes a side stream current on this thread and starts capturing it. Thread-local capture mode,
// so the batch thread may keep pinning host memory while the step is captured.
char* cpw_graph_capture_begin(void* g, int device) {
  return guarded([&] {
    auto* graph = static_cast<Graph*>(g);
    auto current = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device));
    auto side = c10::cuda::getStreamFromPool(false, static_cast<c10::DeviceIndex>(device));
    current.synchronize();
    graph->previous = current;
    c10::cuda::setCurrentCUDAStream(side);
    graph->graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
  });
}

// Ends the capture, instantiates the graph, and makes the previous stream current again.
char* cpw_graph_capture_end(void* g) {
  auto* graph = static_cast<Graph*>(g);
  char* err = guarded([&] { graph->graph.capture_end(); });
  char* err2 = guarded([&] {
    auto side = c10::cuda::getCurrentCUDAStream();
    side.synchronize();
    if (graph->previous) c10::cuda::setCurrentCUDAStream(*graph->previous);
  });
  if (err) {
    std::free(err2);
    return err;
  }
  return err2;
}

// Replays the captured work on the current stream.
char* cpw_graph_replay(void* g) {
  return guarded([&] { static_cast<Graph*>(g)->graph.replay(); });
}

void cpw_graph_free(void* g) { delete static_cast<Graph*>(g); }

void cpw_free_error(char* e) { std::free(e); }
}
