// Stand-in (tests only) for Envoy's envoy/common/pure.h.
#pragma once

#define PURE = 0
