"""A tiny API server for one app: /healthz, and / with the app's row count (via psql,
with the connection settings pgplane injected)."""
import http.server
import subprocess
import sys

app, port = sys.argv[1], int(sys.argv[2])


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            body = b"ok\n"
        else:
            out = subprocess.run(
                ["psql", "-X", "-At", "-c", f"SELECT count(*) FROM app_{app}.events"],
                capture_output=True, text=True, check=False,
            )
            body = f"{app}: {out.stdout.strip() or out.stderr.strip()} events\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print(f"{self.command} {self.path}", flush=True)


print(f"api {app} listening on 127.0.0.1:{port}", flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
