// Stand-in (tests only) for Envoy's io_uring worker factory (envoy/common/io/io_uring.h
// IoUringWorkerFactory: getIoUringWorker, onWorkerThreadInitialized, currentThreadRegistered;
// source/common/io/io_uring_worker_factory_impl.h). The real factory creates one io_uring per
// worker thread, in thread-local storage, when the thread calls onWorkerThreadInitialized; the
// stand-in records only that registration, per thread.
#pragma once

#include <set>

namespace Envoy {
namespace Io {

class IoUringWorkerFactory {
public:
  virtual ~IoUringWorkerFactory() = default;
  void onWorkerThreadInitialized() { registered().insert(this); }
  bool currentThreadRegistered() { return registered().count(this) != 0; }

private:
  static std::set<const IoUringWorkerFactory*>& registered() {
    thread_local std::set<const IoUringWorkerFactory*> set;
    return set;
  }
};

} // namespace Io
} // namespace Envoy
