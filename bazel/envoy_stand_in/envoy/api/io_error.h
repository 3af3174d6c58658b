// Stand-in (tests only) for Envoy's envoy/api/io_error.h: IoError, IoErrorPtr (:15),
// IoCallResult (:77) and IoCallUint64Result (:109), with the real members (line numbers of the
// stored 1.3x-era version read for the stand-in; this header is stable across 1.36..1.40). The
// error codes are reduced to the two the stand-in reports.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <sys/types.h>
#include <utility>

namespace Envoy {
namespace Api {

class IoError;

using IoErrorDeleterType = void (*)(IoError*);
using IoErrorPtr = std::unique_ptr<IoError, IoErrorDeleterType>;

class IoError {
public:
  enum class IoErrorCode { Again, UnknownError };
  virtual ~IoError() = default;
  virtual IoErrorCode getErrorCode() const = 0;
  virtual std::string getErrorDetails() const = 0;
  virtual int getSystemErrorCode() const = 0;

  static IoErrorPtr wrap(IoError* err) {
    return {err, [](IoError* e) { delete e; }};
  }
  static IoErrorPtr none() {
    return {nullptr, [](IoError*) {}};
  }
};

template <typename ReturnValue> struct IoCallResult {
  IoCallResult(ReturnValue return_value, IoErrorPtr err)
      : return_value_(return_value), err_(std::move(err)) {}
  IoCallResult(IoCallResult<ReturnValue>&& result) noexcept
      : return_value_(std::move(result.return_value_)), err_(std::move(result.err_)) {}
  virtual ~IoCallResult() = default;
  IoCallResult& operator=(IoCallResult&& result) noexcept {
    return_value_ = result.return_value_;
    err_ = std::move(result.err_);
    return *this;
  }

  bool ok() const { return err_ == nullptr; }
  bool wouldBlock() const { return !ok() && err_->getErrorCode() == IoError::IoErrorCode::Again; }

  ReturnValue return_value_;
  IoErrorPtr err_;
};

using IoCallBoolResult = IoCallResult<bool>;
using IoCallSizeResult = IoCallResult<ssize_t>;
using IoCallUint64Result = IoCallResult<uint64_t>;

} // namespace Api
} // namespace Envoy
