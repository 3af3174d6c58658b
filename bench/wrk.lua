-- bench/wrk.lua -- the benchmark's load for Debian's wrk 4.1:
--   wrk -t T -c C -d D --latency -s bench/wrk.lua URL
-- POSTs a body of BENCH_BODY_SIZE bytes (default 128) to URL; with BENCH_CLOSE=1 every request
-- carries `Connection: close`, so every request is a new connection. At the end it writes the
-- results as JSON to BENCH_OUT (requests, duration, errors, latency percentiles in microseconds,
-- and the distribution: latency at percentiles 0..100 for the plot).
local size = tonumber(os.getenv("BENCH_BODY_SIZE") or "128")
local chars = "abcdefghijklmnopqrstuvwxyz0123456789"
local body = {}
for i = 1, size do
  local k = (i - 1) % #chars + 1
  body[i] = chars:sub(k, k)
end
wrk.method = "POST"
wrk.body = table.concat(body)
wrk.headers["Content-Type"] = "application/octet-stream"
if os.getenv("BENCH_CLOSE") == "1" then
  wrk.headers["Connection"] = "close"
end

local function distribution_points()
  local ps = {}
  for p = 0, 99 do ps[#ps + 1] = p end
  for p = 1, 9 do ps[#ps + 1] = 99 + p / 10 end
  for p = 1, 9 do ps[#ps + 1] = 99.9 + p / 100 end
  ps[#ps + 1] = 100
  return ps
end

function done(summary, latency, requests)
  local e = summary.errors
  local out = {}
  local function kv(k, v) out[#out + 1] = string.format('"%s": %s', k, v) end
  kv("requests", summary.requests)
  kv("duration_us", summary.duration)
  kv("bytes", summary.bytes)
  kv("errors", string.format('{"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}',
    e.connect, e.read, e.write, e.status, e.timeout))
  kv("latency_us", string.format(
    '{"min": %d, "mean": %.1f, "stdev": %.1f, "max": %d, "p50": %d, "p75": %d, "p90": %d, "p99": %d, "p99_9": %d}',
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
  local pts = {}
  for _, p in ipairs(distribution_points()) do
    pts[#pts + 1] = string.format("[%g, %d]", p, latency:percentile(p))
  end
  kv("distribution_us", "[" .. table.concat(pts, ", ") .. "]")
  local text = "{" .. table.concat(out, ", ") .. "}\n"
  local path = os.getenv("BENCH_OUT")
  if path and path ~= "" then
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
  else
    io.write(text)
  end
end
