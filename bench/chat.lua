-- wrk script: POST /v1/chat/completions straight to the fake model, as the gateway sends it.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"fake","messages":[{"role":"user","content":"ping"}],"stream":false}'
