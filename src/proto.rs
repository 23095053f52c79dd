//! Generated protobuf messages, tonic clients and servers for every ordermesh contract, plus
//! the encoded descriptor set that gRPC reflection serves.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod ordermesh {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("ordermesh.common.v1");
        }
    }
    pub mod order {
        pub mod v1 {
            tonic::include_proto!("ordermesh.order.v1");
        }
    }
    pub mod inventory {
        pub mod v1 {
            tonic::include_proto!("ordermesh.inventory.v1");
        }
    }
    pub mod payment {
        pub mod v1 {
            tonic::include_proto!("ordermesh.payment.v1");
        }
    }
    pub mod shipping {
        pub mod v1 {
            tonic::include_proto!("ordermesh.shipping.v1");
        }
    }
    pub mod notification {
        pub mod v1 {
            tonic::include_proto!("ordermesh.notification.v1");
        }
    }
}

pub use ordermesh::{
    common::v1 as common, inventory::v1 as inventory, notification::v1 as notification,
};
pub use ordermesh::{order::v1 as order, payment::v1 as payment, shipping::v1 as shipping};

/// Encoded `FileDescriptorSet` of every contract (and the Google types they import), served by
/// gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ordermesh_descriptor");

impl order::OrderStatus {
    /// CONFIRMED, CANCELLED or FAILED: the order will not change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Confirmed | Self::Cancelled | Self::Failed)
    }
}
