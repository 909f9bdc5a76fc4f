-- The wrk script of bench/ (run by bench/benchlib/wrk.py): the request, optional open-loop pacing, and a
-- JSON summary. Configured through the environment, so no token appears on a command line:
--   BENCH_METHOD         GET or POST (POST: a new incident body per request, JSON)
--   BENCH_AUTHORIZATION  the Authorization header value, or empty for none
--   BENCH_RATE           total requests per second over all threads and connections; 0 = closed loop
--   BENCH_THREADS        wrk's -t, to split BENCH_RATE per thread
--   BENCH_RESULT         where done() writes the JSON summary
--
-- Pacing (BENCH_RATE > 0): wrk calls delay() before every request of a connection. Each thread keeps a
-- fixed schedule, one slot every threads/rate seconds; the request about to be sent takes the next slot and
-- waits until it (none when the slot is already past). So requests leave at the scheduled rate whatever the
-- response times, as long as a connection is free: open loop, bounded by the connections. The clock is
-- CLOCK_MONOTONIC through LuaJIT's ffi (wrk's Lua has no sub-second clock of its own).

local method = os.getenv("BENCH_METHOD") or "GET"
local authorization = os.getenv("BENCH_AUTHORIZATION") or ""
local rate = tonumber(os.getenv("BENCH_RATE") or "0") or 0
local threads = tonumber(os.getenv("BENCH_THREADS") or "1") or 1
local result_path = os.getenv("BENCH_RESULT")

wrk.method = method
if authorization ~= "" then
    wrk.headers["Authorization"] = authorization
end

-- Threads are numbered by setup() (in the main Lua state) and told their number; each has its own state.
local created = 0
function setup(thread)
    created = created + 1
    thread:set("thread_number", created)
end

if method == "POST" then
    wrk.headers["Content-Type"] = "application/json"
    local components = { "VPN", "printer", "email", "laptop", "Wi-Fi", "SAP", "payroll", "CRM", "Teams", "badge reader" }
    local symptoms = { "times out", "is very slow", "keeps crashing", "shows an error", "cannot connect", "login fails" }
    local categories = { "network", "software", "hardware", "access" }
    local counter = 0
    -- The body of the issue's figures: title, description, impact 2, urgency 2, category, configuration item.
    function request()
        counter = counter + 1
        local component = components[counter % #components + 1]
        local symptom = symptoms[counter % #symptoms + 1]
        local body = string.format(
            '{"title":"%s %s (bench %d-%d)","description":"User reports that the %s %s since this morning.'
                .. ' Error code ERR-%d.","impact":2,"urgency":2,"category":"%s","configuration_item":"CI-%04d"}',
            component, symptom, thread_number or 0, counter, component, symptom, counter,
            categories[counter % #categories + 1], counter % 900
        )
        return wrk.format(nil, nil, nil, body)
    end
end

if rate > 0 then
    local ffi = require("ffi")
    ffi.cdef([[
        typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
        int clock_gettime(int clock_id, bench_timespec *tp);
    ]])
    local now_ts = ffi.new("bench_timespec")
    local function now_ms()
        ffi.C.clock_gettime(1, now_ts) -- CLOCK_MONOTONIC
        return tonumber(now_ts.tv_sec) * 1000 + tonumber(now_ts.tv_nsec) / 1e6
    end
    local interval = 1000 * threads / rate
    local next_slot = nil
    function delay()
        local now = now_ms()
        if next_slot == nil then
            -- Threads start a little apart; offset each thread's schedule so they interleave.
            next_slot = now + interval * ((thread_number or 1) - 1) / threads
        end
        local slot = next_slot
        next_slot = next_slot + interval
        if slot <= now then
            return 0
        end
        return math.floor(slot - now + 0.5)
    end
end

function done(summary, latency, requests)
    local e = summary.errors
    local out = string.format(
        '{"duration_us":%d,"requests":%d,"bytes":%d,'
            .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
            .. '"latency_us":{"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p95":%d,"p99":%d,"p999":%d}}\n',
        summary.duration, summary.requests, summary.bytes,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(95),
        latency:percentile(99), latency:percentile(99.9)
    )
    if result_path then
        local file = assert(io.open(result_path, "w"))
        file:write(out)
        file:close()
    else
        io.write(out)
    end
end
