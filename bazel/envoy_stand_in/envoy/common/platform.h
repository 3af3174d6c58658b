// Stand-in (tests only) for Envoy's envoy/common/platform.h, Linux part only: the fd type and
// the socket validity macros.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

using os_fd_t = int;

#define INVALID_SOCKET -1
#define SOCKET_VALID(sock) ((sock) >= 0)
#define SOCKET_INVALID(sock) ((sock) == -1)
#define SOCKET_FAILURE(rc) ((rc) == -1)
#define SET_SOCKET_INVALID(sock) (sock) = -1
