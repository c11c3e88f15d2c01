-- The token path: fetch /ipxe, then /ignition with the token it carried.
-- With NGINX=1 the same two requests go to the static layout (/ipxe/<mac>,
-- /ignition/<mac>), paying the same parsing here, for a fair comparison.
package.path = os.getenv("LUA_DIR") .. "/?.lua;" .. package.path
local m = require("macs")
local macs, i, pending = nil, 0, {}
local nginx = os.getenv("NGINX") == "1"

function init(args)
  macs = m.load_macs()
  i = math.random(#macs)
end

function request()
  local next = table.remove(pending)
  if next then
    if nginx then
      return wrk.format("GET", "/ignition/" .. next[1])
    end
    return wrk.format("GET", "/ignition?mac=" .. next[1] .. "&token=" .. next[2])
  end
  i = i % #macs + 1
  if nginx then
    return wrk.format("GET", "/ipxe/" .. macs[i])
  end
  return wrk.format("GET", "/ipxe?mac=" .. macs[i])
end

function response(status, headers, body)
  local mac, token = string.match(body, "ignition%?mac=([%x%-]+)&token=(%x+)")
  if nginx then
    mac, token = string.match(body, "ignition%?mac=([%x%-]+)()")
  end
  if mac then
    pending[#pending + 1] = { mac, token }
  end
end

done = m.report
