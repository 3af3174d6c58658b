// Stand-in (tests only) for abseil's absl/functional/any_invocable.h: a move-only function
// wrapper, which is what makes Envoy's Event::PostCb accept callables that own move-only state.
// Only the void() form Envoy's dispatcher uses. Not abseil code.
#pragma once

#include <memory>
#include <type_traits>
#include <utility>

namespace absl {

template <class Signature> class AnyInvocable;

template <class R, class... Args> class AnyInvocable<R(Args...)> {
public:
  AnyInvocable() noexcept = default;
  AnyInvocable(std::nullptr_t) noexcept {}
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, AnyInvocable> &&
                                              std::is_invocable_r_v<R, std::decay_t<F>&, Args...>>>
  AnyInvocable(F&& f) : impl_(std::make_unique<Model<std::decay_t<F>>>(std::forward<F>(f))) {}

  // Move-only, like the real one: a copy would have to copy the callable's state.
  AnyInvocable(AnyInvocable&&) noexcept = default;
  AnyInvocable& operator=(AnyInvocable&&) noexcept = default;
  AnyInvocable(const AnyInvocable&) = delete;
  AnyInvocable& operator=(const AnyInvocable&) = delete;

  explicit operator bool() const noexcept { return impl_ != nullptr; }
  R operator()(Args... args) { return impl_->call(std::forward<Args>(args)...); }

private:
  struct Concept {
    virtual ~Concept() = default;
    virtual R call(Args... args) = 0;
  };
  template <class F> struct Model : Concept {
    explicit Model(F f) : f_(std::move(f)) {}
    R call(Args... args) override { return f_(std::forward<Args>(args)...); }
    F f_;
  };
  std::unique_ptr<Concept> impl_;
};

} // namespace absl
