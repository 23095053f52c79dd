// Validates every Istio and Prometheus Operator object in rendered manifests (multi-document
// YAML files given as arguments) against the CRD schemas shipped in @kubernetes-models packages.
// Core Kubernetes kinds are left to kubernetes-validate; any other custom kind is an error, so a
// typo in apiVersion cannot slip through unvalidated. Exit code 1 on any failure.
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import * as networking from "@kubernetes-models/istio/networking.istio.io/v1beta1";
import * as security from "@kubernetes-models/istio/security.istio.io/v1beta1";
import * as monitoring from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const models = {
  "networking.istio.io/v1beta1": networking,
  "security.istio.io/v1beta1": security,
  "monitoring.coreos.com/v1": monitoring,
};
const core = /^(v1|apps\/v1|policy\/v1|autoscaling\/v2|batch\/v1)$/;

let failures = 0;
let checked = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of parseAllDocuments(readFileSync(file, "utf8"))) {
    const object = doc.toJS();
    if (!object) continue;
    const { apiVersion, kind } = object;
    const name = `${file}: ${kind} ${object.metadata?.name}`;
    if (core.test(apiVersion)) continue;
    const Model = models[apiVersion]?.[kind];
    if (!Model) {
      console.error(`ERROR ${name}: no schema for ${apiVersion} ${kind}`);
      failures++;
      continue;
    }
    try {
      new Model(object).validate();
      checked++;
    } catch (error) {
      console.error(`ERROR ${name}: ${error.message}`);
      failures++;
    }
  }
}
console.log(`${checked} custom resources valid, ${failures} failures`);
process.exit(failures ? 1 : 0);
