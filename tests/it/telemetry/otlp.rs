//! An in-process OTLP trace receiver: HTTP/protobuf (`POST /v1/traces`) and gRPC
//! (`TraceService/Export` over h2c), decoding the real protobuf with `opentelemetry-proto`.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;

const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[derive(Clone, Default)]
pub struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
    service_names: Arc<Mutex<Vec<String>>>,
    pub addr: Option<std::net::SocketAddr>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Receiver { addr: Some(listener.local_addr().unwrap()), ..Receiver::default() };
        let shared = receiver.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(shared.answer(request).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        receiver
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr.unwrap())
    }

    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    pub fn service_names(&self) -> Vec<String> {
        self.service_names.lock().unwrap().clone()
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
        let path = request.uri().path().to_owned();
        let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        if path == GRPC_PATH {
            // gRPC frame: 1 byte compression flag, 4 bytes big-endian length, the message.
            let mut frame = body.clone();
            assert_eq!(frame.get_u8(), 0, "uncompressed gRPC message");
            let len = frame.get_u32() as usize;
            self.keep(ExportTraceServiceRequest::decode(&frame[..len]).expect("gRPC ExportTraceServiceRequest"));
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
                Ok(Frame::trailers(trailers)),
            ];
            let mut response = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
            response.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
            return response;
        }
        assert_eq!(path, "/v1/traces", "OTLP/HTTP traces path");
        self.keep(ExportTraceServiceRequest::decode(body).expect("HTTP ExportTraceServiceRequest"));
        let mut response = Response::new(Full::new(Bytes::new()).boxed());
        response.headers_mut().insert("content-type", HeaderValue::from_static("application/x-protobuf"));
        response
    }

    fn keep(&self, request: ExportTraceServiceRequest) {
        for resource in request.resource_spans {
            if let Some(name) = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(text)
            {
                self.service_names.lock().unwrap().push(name);
            }
            for scope in resource.scope_spans {
                self.spans.lock().unwrap().extend(scope.spans);
            }
        }
    }
}

/// An attribute value as text (arrays joined with `,`).
pub fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::ArrayValue(a)) => a.values.iter().map(text).collect::<Vec<_>>().join(","),
        other => format!("{other:?}"),
    }
}

/// A span attribute as text, if present.
pub fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).map(text)
}
