//! The HTTP/JSON surface: a `POST /api/v1/orders` body decoded as the route decodes it, then
//! validated by the same function as the gRPC CreateOrder. Never a panic; whatever decodes is
//! accepted or rejected with INVALID_ARGUMENT naming a field.

use ordermesh::validation::field_violations;
use tonic::Code;

/// One input: never a panic, whatever the bytes.
pub fn check(data: &[u8]) {
    let Ok(request) = ordermesh_order::http::decode_create(data) else {
        return;
    };
    if let Err(status) = ordermesh_order::validate::create_order(&request) {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(!field_violations(&status).is_empty());
    }
}
