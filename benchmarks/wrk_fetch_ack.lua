-- wrk script for benchmarks/bench_http.py --client wrk: an HTTP worker loop on one connection.
-- Arguments (after wrk's "--"): <queue> <count>. Each connection POSTs /ojs/v1/workers/fetch
-- for up to <count> jobs, then POSTs /ojs/v1/workers/ack for each job it got, then fetches
-- again. A wrk thread's Lua state serves all of its connections, so bench_http.py runs one
-- connection per thread (-t = -c): the jobs a connection fetched are acked on that connection.
-- The done hook prints "WRK_RESULT {json}": answers per kind and status, jobs fetched and
-- acked, empty fetches (the queue ran dry: the window under-measures), the job ids fetched
-- but not acked when wrk stopped (an ack still in flight included: its id leaves the list
-- only when the answer arrives), and the fetches still in flight then.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local headers = {["Content-Type"] = "application/json"}
  fetch_request = wrk.format("POST", "/ojs/v1/workers/fetch", headers,
    '{"queues":["' .. args[1] .. '"],"count":' .. args[2] .. '}')
  ack_headers = headers
  pending = {}      -- ids fetched, not yet acked
  last = "none"     -- "fetch" or "ack": what the connection sent last
  answered_last = true
  -- Flat tables only: wrk's thread:get() crashes copying a table inside a table.
  fetch_statuses, ack_statuses = {}, {}
  fetched, acked, empty = 0, 0, 0
end

function request()
  answered_last = false
  local id = pending[#pending]  -- removed when its answer arrives
  if id then
    last = "ack"
    return wrk.format("POST", "/ojs/v1/workers/ack", ack_headers, '{"job_id":"' .. id .. '"}')
  end
  last = "fetch"
  return fetch_request
end

local function count(kind, status)
  local t = kind == "ack" and ack_statuses or fetch_statuses
  local key = tostring(status)
  t[key] = (t[key] or 0) + 1
end

function response(status, headers, body)
  answered_last = true
  count(last, status)
  if last == "ack" then
    table.remove(pending)
  end
  if status < 200 or status > 299 then
    return
  end
  if last == "ack" then
    acked = acked + 1
    return
  end
  -- The answer holds the first job twice ("jobs" and "job"): each id counts once.
  local got, seen = 0, {}
  for id in string.gmatch(body, '"id":"([^"]+)"') do
    if not seen[id] then
      seen[id] = true
      table.insert(pending, id)
      got = got + 1
    end
  end
  fetched = fetched + got
  if got == 0 then
    empty = empty + 1
  end
end

local function json_counts(t)
  local parts = {}
  for status, n in pairs(t) do
    table.insert(parts, string.format('"%s":%d', status, n))
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local totals = {fetch = {}, ack = {}}
  local sums = {fetched = 0, acked = 0, empty = 0, fetches_in_flight = 0, acks_in_flight = 0}
  local unacked = {}
  for _, thread in ipairs(threads) do
    for _, kind in ipairs({"fetch", "ack"}) do
      for status, n in pairs(thread:get(kind .. "_statuses")) do
        totals[kind][status] = (totals[kind][status] or 0) + n
      end
    end
    sums.fetched = sums.fetched + thread:get("fetched")
    sums.acked = sums.acked + thread:get("acked")
    sums.empty = sums.empty + thread:get("empty")
    if not thread:get("answered_last") then
      local key = thread:get("last") == "ack" and "acks_in_flight" or "fetches_in_flight"
      sums[key] = sums[key] + 1
    end
    for _, id in ipairs(thread:get("pending")) do
      table.insert(unacked, '"' .. id .. '"')
    end
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"duration_us":%d,"statuses":{"fetch":%s,"ack":%s},"fetched":%d,"acked":%d,' ..
    '"empty_fetches":%d,"fetches_in_flight":%d,"acks_in_flight":%d,"unacked":[%s],' ..
    '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d}}\n',
    summary.duration, json_counts(totals.fetch), json_counts(totals.ack), sums.fetched,
    sums.acked, sums.empty, sums.fetches_in_flight, sums.acks_in_flight,
    table.concat(unacked, ","), e.connect, e.read, e.write, e.timeout))
end
