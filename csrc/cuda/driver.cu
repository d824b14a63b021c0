// Whether the machine's CUDA driver can run the kernels of this build.
//
// The kernels link the CUDA runtime of the toolkit that compiled them, which
// needs a driver of at least that CUDA major version (CUDA 12: R525 or newer,
// CUDA 13: R580 or newer), and a GPU whose architecture the build holds code
// for. Either would otherwise fail every launch with an opaque error; instead
// every CUDA entry point reports one of these messages first.
#include <cuda_runtime.h>

#include <mutex>
#include <string>

#define FASTIOU_STRINGIFY_(...) #__VA_ARGS__
#define FASTIOU_STRINGIFY(...) FASTIOU_STRINGIFY_(__VA_ARGS__)

#include "core/overlap_kernels.h"

namespace fastiou {
namespace {

// Compiled like every fastiou kernel: whether the device can load it tells
// whether this build holds code (SASS or PTX) the GPU can run.
__global__ void probe_kernel() {}

constexpr int kMaxDevices = 64;

std::string version_string(int v) { return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10); }

const char* minimum_driver(int major) {
  switch (major) {
    case 11: return "R450";
    case 12: return "R525";
    case 13: return "R580";
    default: return "a matching";
  }
}

std::string check_driver() {
  const int runtime = CUDART_VERSION;
  const std::string built = "fastiou's CUDA kernels were built with CUDA " + version_string(runtime);
  const std::string need = std::string(" and need an NVIDIA driver for CUDA ") + std::to_string(runtime / 1000) +
                           ".0 or newer (" + minimum_driver(runtime / 1000) + " or newer)";
  int driver = 0;
  const cudaError_t err = cudaDriverGetVersion(&driver);
  if (err != cudaSuccess) return built + need + "; asking for the driver's version failed: " + cudaGetErrorName(err);
  if (driver == 0) return built + need + "; no NVIDIA driver was found on this machine";
  if (driver / 1000 < runtime / 1000) {
    return built + need + "; this machine's driver supports CUDA " + version_string(driver) +
           ". Update the driver, or build fastiou with a CUDA " + std::to_string(driver / 1000) +
           ".x nvcc (CMAKE_CUDA_COMPILER=.../bin/nvcc), or without CUDA (FASTIOU_CUDA=OFF)";
  }
  return std::string();
}

// Whether the current device can load fastiou's kernels: a GPU older than the
// built architectures, PTX newer than the driver, or a driver whose kernel
// module does not match it all show up here, before any launch.
std::string check_device(int device) {
  cudaFuncAttributes attributes;
  const cudaError_t err = cudaFuncGetAttributes(&attributes, probe_kernel);
  if (err == cudaSuccess) return std::string();
  cudaGetLastError();  // not sticky: leave no error behind for the caller's next check
  std::string s = "fastiou's CUDA kernels cannot run on CUDA device " + std::to_string(device);
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, device) == cudaSuccess) {
    s += std::string(" (") + prop.name + ", compute capability " + std::to_string(prop.major) + "." +
         std::to_string(prop.minor) + ")";
    cudaGetLastError();
  }
  s += std::string(": ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
#if defined(__CUDA_ARCH_LIST__)
  s += "; this build holds code for CUDA architectures " FASTIOU_STRINGIFY(__CUDA_ARCH_LIST__);
#endif
  s += ". Build fastiou for this GPU (FASTIOU_CUDA_ARCHITECTURES) with a CUDA toolkit its driver supports";
  return s;
}

}  // namespace

std::string cuda_driver_problem() {
  static const std::string problem = check_driver();
  if (!problem.empty()) return problem;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) {
    cudaGetLastError();
    return std::string();  // no usable device: the launch reports it
  }
  // One probe per device and process; a race between two threads probing the
  // same device only repeats the probe.
  static std::string device_problem[kMaxDevices];
  static bool probed[kMaxDevices] = {};
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  if (!probed[device]) {
    device_problem[device] = check_device(device);
    probed[device] = true;
  }
  return device_problem[device];
}

}  // namespace fastiou
