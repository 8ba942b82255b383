-- bench/cookies.lua: requests that cycle over many sessions (scenarios 6, 11 and 16 of
-- bench/run.sh). args: a file with one `Cookie` header value a line, and wrk's thread count.
-- Each thread takes its own share of the lines, so two threads never send one session at
-- once; within a thread, two requests of one session are in flight together only when a
-- connection lags a whole cycle behind (rare with 4 sessions per connection). The requests are
-- formatted once in init(); request() only picks the next one.
local threads = 0

function setup(thread)
    thread:set("tid", threads)
    threads = threads + 1
end

local reqs = {}
local i = 0

function init(args)
    local nthreads = tonumber(args[2]) or 1
    local k = 0
    for line in io.lines(args[1]) do
        if line ~= "" then
            if k % nthreads == tid then
                local h = {}
                for name, value in pairs(wrk.headers) do h[name] = value end
                h["Cookie"] = line
                reqs[#reqs + 1] = wrk.format(nil, nil, h)
            end
            k = k + 1
        end
    end
    assert(#reqs > 0, "no cookies for thread " .. tid .. " in " .. args[1])
end

function request()
    i = i % #reqs + 1
    return reqs[i]
end
