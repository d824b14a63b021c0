// Inputs held until their kernels ran, and deferred label checks: see pending.h.
#include "python/pending.h"

#include <algorithm>
#include <stdexcept>
#include <utility>

namespace fastiou_py {

std::string bad_input_error(const fastiou::OverlapInputs& inputs, const fastiou::CudaInputRecord& record) {
  const std::string message = fastiou::cuda_record_message(inputs, record);
  return message.empty() ? message : "fastiou: " + message;
}

#if FASTIOU_WITH_CUDA
namespace {

// One parked piece of queued work: the inputs of a call, or the host record
// of a label check dropped before its copy landed.
struct Held {
  cudaEvent_t event = nullptr;
  ImportedList inputs;
  fastiou::CudaInputRecord* record = nullptr;
};

// Pinned host memory for label records comes in blocks that are never given
// back (cudaFreeHost may wait for the device); a record returns to the free
// list once the copy into it has landed, so a later copy never races it.
constexpr int kRecordsPerBlock = 64;

struct Registry {
  std::mutex mutex;
  std::vector<Held> held;
  std::vector<fastiou::CudaInputRecord*> free_records;
};

// Never destroyed: its entries hold Python objects, which must not be let go
// after the interpreter has finished; release_all() empties it at exit.
Registry& registry() {
  static Registry* r = new Registry();
  return *r;
}

fastiou::CudaInputRecord* take_record() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (r.free_records.empty()) {
    void* block = nullptr;
    check_cuda(cudaHostAlloc(&block, kRecordsPerBlock * sizeof(fastiou::CudaInputRecord), cudaHostAllocPortable),
               "cudaHostAlloc");
    auto* records = static_cast<fastiou::CudaInputRecord*>(block);
    r.free_records.reserve(kRecordsPerBlock);
    for (int k = 0; k < kRecordsPerBlock; ++k) r.free_records.push_back(records + k);
  }
  fastiou::CudaInputRecord* record = r.free_records.back();
  r.free_records.pop_back();
  return record;
}

void give_back_record(fastiou::CudaInputRecord* record) noexcept {
  if (!record) return;
  try {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    r.free_records.push_back(record);
  } catch (...) {
    // Out of memory for the list: the record is not reused.
  }
}

// Ends a parked entry whose event has completed (or failed). Needs the GIL.
void finish(Held& h) noexcept {
  if (h.event) forget_cuda_error(cudaEventDestroy(h.event));
  h.event = nullptr;
  give_back_record(h.record);
  h.record = nullptr;
  h.inputs.clear();  // the producers' deleters and Python references
}

// Parks an entry; false (and nothing moved) when the list cannot grow.
bool park(Held&& h) noexcept {
  try {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    r.held.reserve(r.held.size() + 1);
    r.held.push_back(std::move(h));
    return true;
  } catch (...) {
    return false;
  }
}

}  // namespace

void release_after_stream(ImportedList inputs, int device, cudaStream_t stream) noexcept {
  (void)device;  // the event belongs to the current device, which is `device`
  cudaEvent_t event = nullptr;
  cudaError_t err = cudaEventCreateWithFlags(&event, cudaEventDisableTiming);
  if (err == cudaSuccess) err = cudaEventRecord(event, stream);
  if (err == cudaSuccess) {
    Held h;
    h.event = event;
    h.inputs = std::move(inputs);
    if (park(std::move(h))) return;
    inputs = std::move(h.inputs);
  }
  // No event to poll: wait for the stream here, then release on return.
  forget_cuda_error(err);
  if (event) cudaEventDestroy(event);
  py::gil_scoped_release nogil;
  forget_cuda_error(cudaStreamSynchronize(stream));
}

size_t release_finished() noexcept {
  std::vector<Held> done;
  size_t left = 0;
  try {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    if (r.held.empty()) return 0;
    std::vector<Held> keep;
    keep.reserve(r.held.size());
    done.reserve(r.held.size());
    for (Held& h : r.held) {
      const cudaError_t q = cudaEventQuery(h.event);
      if (q == cudaErrorNotReady) {
        keep.push_back(std::move(h));
      } else {
        forget_cuda_error(q);  // an error: the kernels will never run, nothing reads the inputs
        done.push_back(std::move(h));
      }
    }
    r.held.swap(keep);
    left = r.held.size();
  } catch (...) {
    return 0;  // out of memory for the lists: try again at the next call
  }
  for (Held& h : done) finish(h);  // outside the lock: the deleters may call back into Python
  return left;
}

void release_all() noexcept {
  std::vector<Held> all;
  try {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    all.swap(r.held);
  } catch (...) {
    return;
  }
  {
    py::gil_scoped_release nogil;
    for (Held& h : all) forget_cuda_error(cudaEventSynchronize(h.event));
  }
  for (Held& h : all) finish(h);
}

std::unique_ptr<LabelCheck> LabelCheck::after_stats(const fastiou::StatsArgs& args, int device,
                                                    cudaStream_t stream) {
  auto check = std::make_unique<LabelCheck>();
  check->inputs_ = static_cast<const fastiou::OverlapInputs&>(args);
  check->inputs_.y_pred = check->inputs_.y_true = check->inputs_.weights = nullptr;
  check->device_ = device;
  check->record_ = take_record();
  cudaError_t err = cudaMemcpyAsync(check->record_, args.workspace + fastiou::kCudaRecordOffset,
                                    sizeof(fastiou::CudaInputRecord), cudaMemcpyDeviceToHost, stream);
  if (err == cudaSuccess) err = cudaEventCreateWithFlags(&check->event_, cudaEventDisableTiming);
  if (err == cudaSuccess) err = cudaEventRecord(check->event_, stream);
  if (err != cudaSuccess) {
    // The copy may be queued: let it land before the record is reused.
    forget_cuda_error(err);
    {
      py::gil_scoped_release nogil;
      forget_cuda_error(cudaStreamSynchronize(stream));
    }
    check_cuda(err, "queueing the label check");
  }
  check->settled_ = false;
  return check;
}

LabelCheck::~LabelCheck() noexcept {
  if (!record_) return;  // settled: nothing left
  if (event_ && !settled_) {
    const cudaError_t q = cudaEventQuery(event_);
    if (q == cudaErrorNotReady) {
      // Dropped before its copy landed: the record returns to the free list
      // once the event completes. Should parking fail, the record and the
      // event are simply never reused.
      Held h;
      h.event = event_;
      h.record = record_;
      park(std::move(h));
      return;
    }
    forget_cuda_error(q);
  }
  if (event_) forget_cuda_error(cudaEventDestroy(event_));
  give_back_record(record_);
}

void LabelCheck::settle() noexcept {
  const fastiou::CudaInputRecord record = *record_;
  forget_cuda_error(cudaEventDestroy(event_));
  event_ = nullptr;
  give_back_record(record_);
  record_ = nullptr;
  settled_ = true;
  try {
    error_ = bad_input_error(inputs_, record);
  } catch (...) {
    error_ = "fastiou: a sparse label is outside [0, channels), or a target or probability outside [0, 1]";
  }
}
#else
size_t release_finished() noexcept { return 0; }
void release_all() noexcept {}
LabelCheck::~LabelCheck() noexcept {}
#endif

bool LabelCheck::ready() {
  std::unique_lock<std::mutex> lock(mutex_, std::try_to_lock);
  if (!lock.owns_lock()) return false;  // another thread is waiting in check()
  if (settled_) return true;
#if FASTIOU_WITH_CUDA
  const cudaError_t q = cudaEventQuery(event_);
  if (q == cudaErrorNotReady) return false;
  if (q == cudaSuccess) {
    settle();
  } else {
    forget_cuda_error(q);  // check() reports it
  }
#endif
  return true;
}

void LabelCheck::check() {
  std::string cuda_error;
  {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(mutex_);
#if FASTIOU_WITH_CUDA
    if (!settled_) {
      const cudaError_t err = cudaEventSynchronize(event_);
      if (err == cudaSuccess) {
        settle();
      } else {
        forget_cuda_error(err);
        cuda_error = std::string("fastiou: waiting for the label check: ") + cudaGetErrorString(err);
      }
    }
#endif
  }
  if (!cuda_error.empty()) throw std::runtime_error(cuda_error);
  if (!error_.empty()) throw py::value_error(error_);
}

std::string LabelCheck::repr() {
  if (!ready()) return "<fastiou LabelCheck: pending>";
  std::lock_guard<std::mutex> lock(mutex_);
  if (!settled_) return "<fastiou LabelCheck: CUDA error, check() raises it>";
  return error_.empty() ? "<fastiou LabelCheck: no out-of-range label>" : "<fastiou LabelCheck: " + error_ + ">";
}

}  // namespace fastiou_py
