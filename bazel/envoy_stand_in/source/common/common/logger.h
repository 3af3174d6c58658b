// Stand-in (tests only) for ENVOY_LOG_MISC from Envoy's source/common/common/logger.h. Formats
// "{}" placeholders in order (the only fmt feature the shim uses) and writes to stderr when
// ENVOY_STAND_IN_LOG is set in the environment.
#pragma once

#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>

namespace Envoy {
namespace Logger {
namespace StandIn {

inline void format(std::ostringstream& out, const char* fmt) { out << fmt; }

template <class T, class... Rest>
void format(std::ostringstream& out, const char* fmt, const T& first, const Rest&... rest) {
  for (; *fmt != '\0'; ++fmt) {
    if (fmt[0] == '{' && fmt[1] == '}') {
      out << first;
      format(out, fmt + 2, rest...);
      return;
    }
    out << *fmt;
  }
}

template <class... Args> void log(const char* level, const char* fmt, const Args&... args) {
  if (std::getenv("ENVOY_STAND_IN_LOG") == nullptr) {
    return;
  }
  std::ostringstream out;
  format(out, fmt, args...);
  std::cerr << "[" << level << "] " << out.str() << "\n";
}

} // namespace StandIn
} // namespace Logger
} // namespace Envoy

#define ENVOY_LOG_MISC(LEVEL, ...) ::Envoy::Logger::StandIn::log(#LEVEL, __VA_ARGS__)
