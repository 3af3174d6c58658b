// A stand-in for the kernel's SMC sockets, for the shim's unit tests on machines whose kernel
// has no SMC (tests only; active only when ENVOY_SMC_FAKE_KERNEL=1 is set at start).
//
// The test binary defines socket(), getsockopt(), setsockopt(), dup(), dup3(), fcntl() and close(); the
// statically linked envoy-smc library and the stand-in call these instead of libc's. An "SMC
// socket" is then a real TCP socket that the fake remembers by fd and reports, through
// SO_DOMAIN / SO_PROTOCOL, as AF_SMC or IPPROTO_SMC, so the library probes "SMC available",
// decides, replaces sockets under their fd numbers and reads their kind back as it would on a
// real SMC kernel, while the data still flows over TCP. Like the real kernel, AF_SMC sockets
// refuse SO_REUSEPORT. Without the variable every call goes straight to the kernel.
//
// A black hole can be set (fakeBlackHole): an SMC socket's connect() to that destination goes to
// a stand-in address instead (a listener whose accept queue is full, which drops the SYNs), while
// plain TCP sockets reach the destination: what a middlebox dropping SMC's SYNs does.

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <netinet/in.h>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdlib>
#include <cstring>

namespace {

constexpr int kAfSmc = 43;
constexpr int kIpprotoSmc = 256;
constexpr int kSmcprotoSmc6 = 1;
constexpr int kSolSmc = 286;
constexpr int kMaxFd = 1 << 16;

enum Kind : uint8_t { None = 0, AfSmc4 = 1, AfSmc6 = 2, Ipproto = 3 };

std::atomic<uint8_t> kinds[kMaxFd];

// The black hole: SMC connects to black_hole_dest go to black_hole_stall instead (IPv4 only).
sockaddr_in black_hole_dest{};
sockaddr_in black_hole_stall{};
std::atomic<bool> black_hole_set{false};

bool active() {
  static const bool on = [] {
    const char* value = std::getenv("ENVOY_SMC_FAKE_KERNEL");
    return value != nullptr && std::strcmp(value, "1") == 0;
  }();
  return on;
}

Kind kindOf(int fd) {
  return fd >= 0 && fd < kMaxFd ? static_cast<Kind>(kinds[fd].load()) : None;
}

void remember(int fd, Kind kind) {
  if (fd >= 0 && fd < kMaxFd) {
    kinds[fd].store(kind);
  }
}

int writeInt(void* optval, socklen_t* optlen, int value) {
  if (optval == nullptr || optlen == nullptr || *optlen < static_cast<socklen_t>(sizeof(int))) {
    errno = EINVAL;
    return -1;
  }
  std::memcpy(optval, &value, sizeof(int));
  *optlen = sizeof(int);
  return 0;
}

} // namespace

extern "C" {

int socket(int domain, int type, int protocol) noexcept {
  if (!active()) {
    return static_cast<int>(::syscall(SYS_socket, domain, type, protocol));
  }
  Kind kind = None;
  if (domain == kAfSmc) {
    kind = protocol == kSmcprotoSmc6 ? AfSmc6 : AfSmc4;
    domain = kind == AfSmc6 ? AF_INET6 : AF_INET;
    protocol = 0;
  } else if ((domain == AF_INET || domain == AF_INET6) && protocol == kIpprotoSmc) {
    kind = Ipproto;
    protocol = 0;
  }
  const int fd = static_cast<int>(::syscall(SYS_socket, domain, type, protocol));
  remember(fd, kind);
  return fd;
}

int getsockopt(int fd, int level, int optname, void* __restrict optval,
               socklen_t* __restrict optlen) noexcept {
  const Kind kind = active() ? kindOf(fd) : None;
  if (kind != None && level == SOL_SOCKET && optname == SO_DOMAIN && kind != Ipproto) {
    return writeInt(optval, optlen, kAfSmc);
  }
  if (kind != None && level == SOL_SOCKET && optname == SO_PROTOCOL) {
    return writeInt(optval, optlen,
                    kind == Ipproto ? kIpprotoSmc : (kind == AfSmc6 ? kSmcprotoSmc6 : 0));
  }
  return static_cast<int>(::syscall(SYS_getsockopt, fd, level, optname, optval, optlen));
}

int setsockopt(int fd, int level, int optname, const void* optval, socklen_t optlen) noexcept {
  const Kind kind = active() ? kindOf(fd) : None;
  if ((kind == AfSmc4 || kind == AfSmc6) && level == SOL_SOCKET && optname == SO_REUSEPORT) {
    errno = EOPNOTSUPP;
    return -1;
  }
  if (kind != None && level == kSolSmc) {
    return 0;
  }
  return static_cast<int>(::syscall(SYS_setsockopt, fd, level, optname, optval, optlen));
}

int dup(int fd) noexcept {
  const int copy = static_cast<int>(::syscall(SYS_dup, fd));
  if (active() && copy >= 0) {
    remember(copy, kindOf(fd));
  }
  return copy;
}

int dup3(int oldfd, int newfd, int flags) noexcept {
  const int rc = static_cast<int>(::syscall(SYS_dup3, oldfd, newfd, flags));
  if (active() && rc >= 0) {
    remember(newfd, kindOf(oldfd));
  }
  return rc;
}

// fcntl is variadic; every command passes at most one integer- or pointer-sized argument.
int fcntl(int fd, int cmd, ...) {
  va_list args;
  va_start(args, cmd);
  const unsigned long arg = va_arg(args, unsigned long);
  va_end(args);
  const int rc = static_cast<int>(::syscall(SYS_fcntl, fd, cmd, arg));
  if (active() && rc >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)) {
    remember(rc, kindOf(fd));
  }
  return rc;
}

int connect(int fd, const sockaddr* addr, socklen_t len) {
  if (active() && black_hole_set.load() && kindOf(fd) != None && addr != nullptr &&
      len >= sizeof(sockaddr_in) && addr->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(addr);
    if (in->sin_addr.s_addr == black_hole_dest.sin_addr.s_addr &&
        in->sin_port == black_hole_dest.sin_port) {
      addr = reinterpret_cast<const sockaddr*>(&black_hole_stall);
    }
  }
  return static_cast<int>(::syscall(SYS_connect, fd, addr, len));
}

int close(int fd) {
  if (active()) {
    remember(fd, None);
  }
  return static_cast<int>(::syscall(SYS_close, fd));
}

} // extern "C"

namespace EnvoySmcTest {
bool fakeKernelActive() { return active(); }

void fakeBlackHole(const sockaddr_in& dest, const sockaddr_in& stall) {
  black_hole_dest = dest;
  black_hole_stall = stall;
  black_hole_set.store(true);
}
} // namespace EnvoySmcTest
