-- Shared by the boot-storm scripts: the MAC list and latency summary.
local M = {}

function M.load_macs()
  local macs = {}
  for line in io.lines(os.getenv("MACS_FILE")) do
    macs[#macs + 1] = line
  end
  return macs
end

function M.report(summary, latency)
  io.write(string.format("requests/s %.0f  p50 %.2f ms  p99 %.2f ms  errors %d (non-2xx %d)\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end

return M
