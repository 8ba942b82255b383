-- bench/contention.lua: scenario 10 of bench/run.sh. Every request carries x-bench-patch, a
-- JSON merge patch that the upstream returns as x-session-patch: one key per in-flight
-- request slot (thread t, slot k, as many slots as the thread has connections) set to a new
-- value each time, so concurrent requests on the one session change different keys and every
-- request is a real change.
local threads = 0

function setup(thread)
    thread:set("tid", threads)
    threads = threads + 1
end

local counter = 0
local slots = 32

function init(args)
    slots = tonumber(args[1]) or 32
end

function request()
    counter = counter + 1
    wrk.headers["X-Bench-Patch"] =
        string.format('{"t%dk%d":%d}', tid, counter % slots, counter)
    return wrk.format()
end
