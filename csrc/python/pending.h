// Work fastiou._fastiou_kernels leaves queued on a CUDA stream when a call
// returns: the inputs its kernels still read, and the label check that
// overlap_stats(check_labels=False) hands back instead of waiting.
//
// Inputs are held until their kernels ran. A framework may free or reuse an
// array's memory as soon as nothing references it (JAX does so on its own
// streams), while fastiou's kernels reading it are still queued on fastiou's
// stream. So a CUDA call does not let go of its inputs when it returns: it
// records a CUDA event on its stream after its launches and parks (event,
// inputs) in a process-wide list. Each later call into the module, and the
// interpreter's exit, polls that list with cudaEventQuery (no waiting) and
// releases the inputs whose event has completed: their DLPack deleters run and
// the Python objects are let go, with the GIL held. Nothing is released from a
// CUDA host callback, which may call neither CUDA nor Python.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "python/dlpack.h"

namespace fastiou_py {

using ImportedList = std::vector<std::unique_ptr<Imported>>;

#if FASTIOU_WITH_CUDA
// Holds `inputs` until the work enqueued so far on `stream` (of `device`, the
// current device) has run. Never raises: without an event it waits for the
// stream instead. Needs the GIL.
void release_after_stream(ImportedList inputs, int device, cudaStream_t stream) noexcept;
#endif

// Releases the inputs of calls whose kernels have run; returns the number of
// calls whose inputs are still held. Needs the GIL.
size_t release_finished() noexcept;

// Waits for every call still held and releases its inputs (at exit).
void release_all() noexcept;

// The message of the ValueError for a value the range guards refused (a bad
// sparse label first), from its record; empty when there is none.
std::string bad_input_error(const fastiou::OverlapInputs& inputs, const fastiou::CudaInputRecord& record);

// Whether the inputs of one overlap_stats call passed the range guards: its
// sparse labels in range, its targets and probabilities in [0, 1].
//
// Checking a value on the GPU means reading the kernel's record on the host
// after the kernel ran. Without waiting (check_labels=False, or dense
// targets) overlap_stats copies the record to pinned host memory on its
// stream, records an event and returns this; ready() asks whether the copy
// has landed, check() waits for it and raises the ValueError naming the first
// bad value. Calls that checked already (CPU arrays, sparse labels with
// check_labels=True) return one with nothing to wait for.
class LabelCheck {
 public:
  LabelCheck() = default;
  LabelCheck(const LabelCheck&) = delete;
  LabelCheck& operator=(const LabelCheck&) = delete;
  ~LabelCheck() noexcept;

#if FASTIOU_WITH_CUDA
  // After a stats launch on `stream` (`device` current): copies the label
  // record out of the stats workspace and records an event.
  static std::unique_ptr<LabelCheck> after_stats(const fastiou::StatsArgs& args, int device, cudaStream_t stream);
#endif

  bool ready();   // never waits
  void check();   // waits; raises ValueError on a bad label, RuntimeError on a CUDA error
  std::string repr();

 private:
  void settle() noexcept;  // the record has landed: read it, give back the event and host memory

  std::mutex mutex_;
  bool settled_ = true;
  std::string error_;  // the range guards' message, or empty
  fastiou::OverlapInputs inputs_;  // geometry and label options (no pointers), for the message
#if FASTIOU_WITH_CUDA
  cudaEvent_t event_ = nullptr;
  fastiou::CudaInputRecord* record_ = nullptr;  // pinned host memory the record is copied to
  int device_ = 0;
#endif
};

}  // namespace fastiou_py
