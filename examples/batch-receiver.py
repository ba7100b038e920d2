#!/usr/bin/env python3
"""A batch receiver for lote's http handler (README "Batches over the uplink").
Takes lote's NDJSON batch, stores each reading, answers one line per item.
Run: python3 examples/batch-receiver.py 8080"""
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        replies = []
        for line in body.decode().splitlines():
            item = json.loads(line)  # {"id", "priority", "payload"}
            try:
                reading = json.loads(item["payload"])
                with open("readings.ndjson", "a") as out:  # your store here
                    out.write(json.dumps({"id": item["id"], **reading}) + "\n")
                replies.append({"id": item["id"], "ok": True, "output": "stored"})
            except (ValueError, TypeError) as e:  # not a reading: no retry helps
                replies.append({"id": item["id"], "ok": False, "retryable": False, "error": str(e)})
        out = "".join(json.dumps(r) + "\n" for r in replies).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

HTTPServer(("127.0.0.1", int(sys.argv[1])), Receiver).serve_forever()
