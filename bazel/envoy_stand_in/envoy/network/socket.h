// Stand-in (tests only) for Envoy's envoy/network/socket.h: only Socket::Type, which selects
// stream vs datagram in SocketInterface::socket().
#pragma once

namespace Envoy {
namespace Network {

class Socket {
public:
  enum class Type { Stream, Datagram };
};

} // namespace Network
} // namespace Envoy
