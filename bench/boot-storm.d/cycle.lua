-- Cycles through every MAC: PATH_PREFIX .. mac .. PATH_SUFFIX.
package.path = os.getenv("LUA_DIR") .. "/?.lua;" .. package.path
local m = require("macs")
local macs, i = nil, 0
local prefix, suffix = os.getenv("PATH_PREFIX"), os.getenv("PATH_SUFFIX") or ""

function init(args)
  macs = m.load_macs()
  i = math.random(#macs)
end

function request()
  i = i % #macs + 1
  return wrk.format("GET", prefix .. macs[i] .. suffix)
end

done = m.report
