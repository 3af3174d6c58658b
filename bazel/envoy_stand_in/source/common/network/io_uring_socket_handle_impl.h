// Stand-in (tests only) for Envoy's source/common/network/io_uring_socket_handle_impl.h: the handle
// the default socket interface builds when io_uring is on. The real class derives from
// IoSocketHandleBaseImpl and drives reads, writes, connect and accept through the worker's
// io_uring; the stand-in only marks which handle Envoy would have built (its I/O is plain).
#pragma once

#include "source/common/io/io_uring_worker_factory_impl.h"
#include "source/common/network/io_socket_handle_impl.h"

namespace Envoy {
namespace Network {

class IoUringSocketHandleImpl : public IoSocketHandleImpl {
public:
  IoUringSocketHandleImpl(Io::IoUringWorkerFactory&, os_fd_t fd, bool socket_v6only,
                          absl::optional<int> domain)
      : IoSocketHandleImpl(fd, socket_v6only, domain) {}
};

} // namespace Network
} // namespace Envoy
