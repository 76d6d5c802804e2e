-- wrk script: POST one Cloud status body (for tests/bench/webhooks.py --serve)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
-- tests/bench/webhooks.py's channel credentials, bench:bench-password
wrk.headers["Authorization"] = "Basic YmVuY2g6YmVuY2gtcGFzc3dvcmQ="
wrk.body = '{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"phone_number_id":"1"},"statuses":[{"id":"wamid.x1","recipient_id":"4915100000001","status":"delivered","timestamp":"1767225600"}]}}]}]}'
