"""HTTPS test server: python3 tls_server.py CERT KEY PORT_FILE.

Listens on a free port of 127.0.0.1, writes the port to PORT_FILE once it accepts
connections, and replies to every GET and POST with 200 and the body "ok".
"""

import http.server
import os
import ssl
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = reply
    do_POST = reply

    def log_message(self, format, *args):
        sys.stderr.write("tls_server: " + (format % args) + "\n")


def main():
    cert, key, port_file = sys.argv[1:4]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    partial = port_file + ".partial"
    with open(partial, "w") as out:
        out.write(str(server.server_address[1]))
    os.rename(partial, port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
