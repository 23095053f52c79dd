#!/usr/bin/env python3
"""Places an order through a Python client generated from ordermesh's proto/, follows it with
WatchOrder to a terminal status and prints its saga timeline.

Generate the client first (grpcio-tools; the well-known types come with it), then run:

    python3 -m grpc_tools.protoc -I proto --python_out=gen --grpc_python_out=gen \\
        proto/ordermesh/*/v1/*.proto
    PYTHONPATH=gen python3 examples/python/place_order.py --target 127.0.0.1:50051

Exit code 0 when the order ends CONFIRMED, 1 when it ends otherwise, 2 on an RPC error.
"""
import argparse
import sys
import uuid

import grpc

from ordermesh.common.v1 import common_pb2
from ordermesh.order.v1 import order_pb2, order_pb2_grpc

TERMINAL = {
    order_pb2.ORDER_STATUS_CONFIRMED,
    order_pb2.ORDER_STATUS_CANCELLED,
    order_pb2.ORDER_STATUS_FAILED,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="order service host:port")
    parser.add_argument("--sku", default="LAPTOP")
    parser.add_argument("--quantity", type=int, default=1)
    parser.add_argument("--price-minor", type=int, default=129_900, help="unit price in cents")
    parser.add_argument("--token", default="tok_visa", help="sandbox payment token")
    args = parser.parse_args()

    with grpc.insecure_channel(args.target) as channel:
        orders = order_pb2_grpc.OrderServiceStub(channel)
        request = order_pb2.CreateOrderRequest(
            # The request id makes retrying CreateOrder safe: the same order comes back.
            request_id=str(uuid.uuid4()),
            customer_id="cust-python-example",
            lines=[
                order_pb2.OrderLine(
                    sku=args.sku,
                    quantity=args.quantity,
                    unit_price=common_pb2.Money(currency_code="USD", amount_minor=args.price_minor),
                )
            ],
            shipping_address=common_pb2.Address(
                recipient_name="Grace Hopper",
                line1="1 Compiler Way",
                city="Arlington",
                postal_code="22201",
                country_code="US",
            ),
            shipping_method=order_pb2.SHIPPING_METHOD_STANDARD,
            payment_token=args.token,
        )
        try:
            order = orders.CreateOrder(request, timeout=10).order
            print(f"placed {order.order_id}")
            status = order.status
            for update in orders.WatchOrder(
                order_pb2.WatchOrderRequest(order_id=order.order_id), timeout=60
            ):
                status = update.order.status
                print(f"status {order_pb2.OrderStatus.Name(status)}")
                if status in TERMINAL:
                    break
            timeline = orders.GetSagaTimeline(
                order_pb2.GetSagaTimelineRequest(order_id=order.order_id), timeout=10
            )
        except grpc.RpcError as error:
            print(f"error {error.code().name}: {error.details()}", file=sys.stderr)
            return 2
        for step in timeline.steps:
            kind = "compensation" if step.compensation else "step"
            print(
                f"{kind} {step.name} {order_pb2.StepStatus.Name(step.status)} "
                f"attempts={step.attempts}"
            )
        print(f"final {order_pb2.OrderStatus.Name(status)}")
        return 0 if status == order_pb2.ORDER_STATUS_CONFIRMED else 1


if __name__ == "__main__":
    sys.exit(main())
