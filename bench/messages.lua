-- wrk script: POST /v1/messages with a fresh session per request, or one shared session.
--
--   wrk ... -s bench/messages.lua URL -- TAG          every request gets session TAG-THREAD-N
--   wrk ... -s bench/messages.lua URL -- TAG single   every request uses session TAG
--
-- TAG must differ between series so that no series continues the sessions of an earlier one.

local threads_started = 0

function setup(thread)
   threads_started = threads_started + 1
   thread:set("thread_number", threads_started)
end

function init(args)
   tag = args[1] or "wrk"
   single_session = args[2] == "single"
   sent = 0
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   fixed_body = string.format(
      '{"session_id":"%s","user_id":"bench","text":"ping"}', tag)
end

function request()
   if single_session then
      return wrk.format(nil, nil, nil, fixed_body)
   end
   sent = sent + 1
   local body = string.format(
      '{"session_id":"%s-%d-%d","user_id":"bench","text":"ping"}',
      tag, thread_number, sent)
   return wrk.format(nil, nil, nil, body)
end
