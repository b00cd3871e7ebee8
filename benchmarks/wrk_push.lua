-- wrk script for benchmarks/bench_http.py --client wrk: POST /ojs/v1/jobs, one job a request.
-- Arguments (after wrk's "--"): <queue>. The done hook prints one line, "WRK_RESULT {json}",
-- with every answer counted per status, so a run that gets 4xx/5xx cannot pass as throughput.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local note = string.rep("x", 180)
  local body = '{"type":"bench.noop","args":[{"n":1,"customer":"cust-0001",' ..
    '"action":"bench.noop","note":"' .. note .. '"}],"options":{"queue":"' .. args[1] .. '"}}'
  push_request = wrk.format("POST", "/ojs/v1/jobs", {["Content-Type"] = "application/json"}, body)
  statuses = {}
  sent = 0
  answered = 0
end

function request()
  sent = sent + 1
  return push_request
end

function response(status, headers, body)
  answered = answered + 1
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
end

function done(summary, latency, requests)
  local total, in_flight = {}, 0
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      total[status] = (total[status] or 0) + n
    end
    in_flight = in_flight + thread:get("sent") - thread:get("answered")
  end
  local parts = {}
  for status, n in pairs(total) do
    table.insert(parts, string.format('"%s":%d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"duration_us":%d,"statuses":{%s},"in_flight":%d,"socket_errors":' ..
    '{"connect":%d,"read":%d,"write":%d,"timeout":%d}}\n',
    summary.duration, table.concat(parts, ","), in_flight,
    e.connect, e.read, e.write, e.timeout))
end
