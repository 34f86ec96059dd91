"""An OTLP/HTTP receiver for the telemetry tests: decodes what sluice exports with the
OpenTelemetry project's own protobuf classes (the opentelemetry-proto package), independent of
the Rust exporter, and writes each metric point and span as one JSON line.

Usage: receiver.py OUT_FILE. Prints the port it listens on (loopback), then serves until killed.
"""

import gzip
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

OUT = open(sys.argv[1], "a", buffering=1)


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind in ("string_value", "bool_value", "int_value", "double_value") else str(v)


def attrs(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def metric_lines(req):
    for rm in req.resource_metrics:
        resource = attrs(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                for p in getattr(m, kind).data_points:
                    line = {"signal": "metric", "name": m.name, "kind": kind, "unit": m.unit,
                            "scope": sm.scope.name, "resource": resource, "attributes": attrs(p.attributes)}
                    if kind == "histogram":
                        line.update(count=p.count, sum=p.sum)
                    else:
                        line["value"] = p.as_int if p.WhichOneof("value") == "as_int" else p.as_double
                    if kind == "sum":
                        line["monotonic"] = m.sum.is_monotonic
                    yield line


def span_lines(req):
    for rs in req.resource_spans:
        resource = attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield {"signal": "span", "name": s.name, "kind": s.kind, "trace_id": s.trace_id.hex(),
                       "span_id": s.span_id.hex(), "parent_span_id": s.parent_span_id.hex(),
                       "resource": resource, "attributes": attrs(s.attributes),
                       "links": [{"trace_id": l.trace_id.hex(), "span_id": l.span_id.hex()} for l in s.links],
                       "start": s.start_time_unix_nano, "end": s.end_time_unix_nano}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path == "/v1/metrics":
            req, resp, lines = metrics_service_pb2.ExportMetricsServiceRequest(), \
                metrics_service_pb2.ExportMetricsServiceResponse(), metric_lines
        elif self.path == "/v1/traces":
            req, resp, lines = trace_service_pb2.ExportTraceServiceRequest(), \
                trace_service_pb2.ExportTraceServiceResponse(), span_lines
        else:
            self.send_response(404)
            self.end_headers()
            return
        req.ParseFromString(body)
        for line in lines(req):
            OUT.write(json.dumps(line) + "\n")
        out = resp.SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
