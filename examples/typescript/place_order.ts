// Places an order through a TypeScript client generated from ordermesh's proto/ (protoc-gen-es),
// over gRPC with Connect's Node transport; follows it with WatchOrder to a terminal status and
// prints its saga timeline.
//
//   npm ci && npm run generate && npm run build
//   node dist/place_order.js --target http://127.0.0.1:50051 [--sku LAPTOP] [--token tok_visa]
//
// Exit code 0 when the order ends CONFIRMED, 1 when it ends otherwise, 2 on an RPC error or a bad
// argument.
import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  CreateOrderRequestSchema,
  OrderService,
  OrderStatus,
  ShippingMethod,
  StepStatus,
  type CreateOrderRequest,
} from "./gen/ordermesh/order/v1/order_pb.js";

interface Options {
  target: string;
  sku: string;
  quantity: bigint;
  priceMinor: bigint;
  token: string;
}

const TERMINAL: ReadonlySet<OrderStatus> = new Set([
  OrderStatus.CONFIRMED,
  OrderStatus.CANCELLED,
  OrderStatus.FAILED,
]);

/** A bad command-line argument: exit code 2 with a message that says what to fix. */
class UsageError extends Error {}

/** Reads the command line; a malformed number is a usage error, not a NaN sent to the server. */
function options(): Options {
  const { values } = parseArgs({
    options: {
      target: { type: "string", default: "http://127.0.0.1:50051" },
      sku: { type: "string", default: "LAPTOP" },
      quantity: { type: "string", default: "1" },
      "price-minor": { type: "string", default: "129900" },
      token: { type: "string", default: "tok_visa" },
    },
  });
  const integer = (name: string, text: string): bigint => {
    if (!/^\d+$/.test(text)) {
      throw new UsageError(`--${name} must be a whole number, got ${JSON.stringify(text)}`);
    }
    return BigInt(text);
  };
  return {
    target: values.target,
    sku: values.sku,
    quantity: integer("quantity", values.quantity),
    priceMinor: integer("price-minor", values["price-minor"]),
    token: values.token,
  };
}

function orderRequest(args: Options): CreateOrderRequest {
  return create(CreateOrderRequestSchema, {
    // The request id makes retrying CreateOrder safe: the same order comes back.
    requestId: randomUUID(),
    customerId: "cust-ts-example",
    lines: [
      {
        sku: args.sku,
        quantity: args.quantity,
        unitPrice: { currencyCode: "USD", amountMinor: args.priceMinor },
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
}

/** Follows the order's status stream until it is terminal; returns the last status seen. */
async function watch(orders: Client<typeof OrderService>, orderId: string): Promise<OrderStatus> {
  let status = OrderStatus.UNSPECIFIED;
  for await (const update of orders.watchOrder({ orderId }, { timeoutMs: 60_000 })) {
    status = update.order?.status ?? status;
    console.log(`status ${OrderStatus[status]}`);
    if (TERMINAL.has(status)) break;
  }
  return status;
}

async function main(): Promise<number> {
  const args = options();
  const orders = createClient(OrderService, createGrpcTransport({ baseUrl: args.target }));
  const { order } = await orders.createOrder(orderRequest(args), { timeoutMs: 10_000 });
  if (order === undefined) {
    throw new ConnectError("CreateOrder answered without an order", Code.Internal);
  }
  console.log(`placed ${order.orderId}`);
  const status = TERMINAL.has(order.status) ? order.status : await watch(orders, order.orderId);
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
  (error: unknown) => {
    const message =
      error instanceof ConnectError
        ? `${Code[error.code]}: ${error.rawMessage}`
        : error instanceof Error
          ? error.message
          : String(error);
    console.error(`error ${message}`);
    process.exit(2);
  },
);
