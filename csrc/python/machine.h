// What fastiou._fastiou_kernels reports about the machine and the build:
// CUDA devices, the driver and the default memory pool, the CPU kernels' SIMD
// level and the XLA FFI handlers.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

namespace fastiou_py {

namespace py = pybind11;

// CUDA devices visible (0 without CUDA kernels).
int cuda_device_count();

// "" when this build's CUDA kernels can run on the machine's driver, else why not.
std::string cuda_driver_problem();

// Raises, before any CUDA call, when a CUDA array on `device` cannot run
// fastiou's kernels.
void require_cuda_kernels(int device);

// Bytes in use in the device's default stream-ordered pool, which fastiou's
// outputs and scratch come from; reset_high restarts its high-water mark.
int64_t cuda_pool_used(int device, bool reset_high);
int64_t cuda_pool_used_high(int device);

// The XLA FFI handlers as PyCapsules, by target and platform.
py::dict ffi_handlers();

// The CPU kernels' SIMD level as (level, levels this CPU runs, problem).
py::tuple cpu_target_tuple();
py::tuple select_cpu_target_tuple(const std::string& requested, int cpu_level);

}  // namespace fastiou_py
