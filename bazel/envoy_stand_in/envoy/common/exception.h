// Stand-in (tests only) for Envoy's envoy/common/exception.h: EnvoyException, the exception a
// factory throws to make Envoy refuse a configuration.
#pragma once

#include <stdexcept>
#include <string>

namespace Envoy {

class EnvoyException : public std::runtime_error {
public:
  EnvoyException(const std::string& message) : std::runtime_error(message) {}
};

} // namespace Envoy
