// Places an order through a JavaScript client generated from ordermesh's proto/ (protoc-gen-es),
// over gRPC with Connect's Node transport; follows it with WatchOrder to a terminal status and
// prints its saga timeline.
//
//   npm ci && npm run generate
//   node place_order.mjs --target http://127.0.0.1:50051 [--sku LAPTOP] [--token tok_visa]
//
// Exit code 0 when the order ends CONFIRMED, 1 when it ends otherwise, 2 on an RPC error.
import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";
import { create } from "@bufbuild/protobuf";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  OrderService,
  OrderStatus,
  ShippingMethod,
  StepStatus,
  CreateOrderRequestSchema,
} from "./gen/ordermesh/order/v1/order_pb.js";

const { values: args } = parseArgs({
  options: {
    target: { type: "string", default: "http://127.0.0.1:50051" },
    sku: { type: "string", default: "LAPTOP" },
    quantity: { type: "string", default: "1" },
    "price-minor": { type: "string", default: "129900" },
    token: { type: "string", default: "tok_visa" },
  },
});

const TERMINAL = new Set([OrderStatus.CONFIRMED, OrderStatus.CANCELLED, OrderStatus.FAILED]);
const transport = createGrpcTransport({ baseUrl: args.target });
const orders = createClient(OrderService, transport);

async function main() {
  const request = create(CreateOrderRequestSchema, {
    // The request id makes retrying CreateOrder safe: the same order comes back.
    requestId: randomUUID(),
    customerId: "cust-js-example",
    lines: [
      {
        sku: args.sku,
        quantity: BigInt(args.quantity),
        unitPrice: { currencyCode: "USD", amountMinor: BigInt(args["price-minor"]) },
      },
    ],
    shippingAddress: {
      recipientName: "Ada Lovelace",
      line1: "10 Engine Street",
      city: "London",
      postalCode: "EC1A 1BB",
      countryCode: "GB",
    },
    shippingMethod: ShippingMethod.STANDARD,
    paymentToken: args.token,
  });
  const { order } = await orders.createOrder(request, { timeoutMs: 10_000 });
  console.log(`placed ${order.orderId}`);
  let status = order.status;
  for await (const update of orders.watchOrder({ orderId: order.orderId }, { timeoutMs: 60_000 })) {
    status = update.order.status;
    console.log(`status ${OrderStatus[status]}`);
    if (TERMINAL.has(status)) break;
  }
  const timeline = await orders.getSagaTimeline({ orderId: order.orderId }, { timeoutMs: 10_000 });
  for (const step of timeline.steps) {
    const kind = step.compensation ? "compensation" : "step";
    console.log(`${kind} ${step.name} ${StepStatus[step.status]} attempts=${step.attempts}`);
  }
  console.log(`final ${OrderStatus[status]}`);
  return status === OrderStatus.CONFIRMED ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (error) => {
    const message = error instanceof ConnectError ? `${error.code}: ${error.rawMessage}` : error;
    console.error(`error ${message}`);
    process.exit(2);
  },
);
