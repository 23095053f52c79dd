//! The saga's state diagram as inline SVG, laid out from [`definition::graph`] (the source
//! `ordermesh saga graph` prints), with the transitions one order took highlighted.
//!
//! The layout is the saga's own shape, not a general graph layout: the forward statuses in a
//! row, COMPENSATING under them, its two ends under that. A status the table adds lands in
//! the row its transitions put it in, so the drawing follows the table without editing.
//!
//! Every element is written with a closing tag (`<line …></line>`): inside HTML, the parser
//! reads a foreign element without one as still open, and everything after it as its children.

use maud::{Markup, html};
use ordermesh::proto::order::{SagaStep, StepStatus};

use crate::saga::definition::{Cause, Step, TABLE, TERMINAL_MARK, Transition, graph};

/// Pixels per character of the monospace labels (13 px nodes, 11 px edge labels).
const NODE_CHAR: f64 = 8.0;
const LABEL_CHAR: f64 = 6.7;
const NODE_HEIGHT: f64 = 34.0;
const ROWS: [f64; 3] = [70.0, 210.0, 330.0];
const MARGIN: f64 = 30.0;

/// Where a status is drawn.
struct Node {
    name: String,
    x: f64,
    y: f64,
    width: f64,
}

/// Which transitions an order's saga took, read from its timeline and status.
pub struct Path<'a> {
    pub status: &'a str,
    pub steps: &'a [SagaStep],
}

impl Path<'_> {
    fn succeeded(&self, step: Step) -> bool {
        self.steps.iter().any(|s| {
            !s.compensation && s.name == step.name() && s.status() == StepStatus::Succeeded
        })
    }

    fn compensating(&self) -> bool {
        matches!(self.status, "COMPENSATING" | "CANCELLED" | "FAILED")
    }

    /// Whether the order went along `t`.
    pub fn took(&self, t: &Transition) -> bool {
        match t.cause {
            Cause::Placed => true,
            Cause::Succeeded(step) => self.succeeded(step),
            // The forward step that was current when compensation began: the first one that
            // did not succeed.
            Cause::Failed(step) => {
                self.compensating()
                    && TABLE
                        .iter()
                        .filter(|s| !s.compensation)
                        .map(|s| s.step)
                        .find(|s| !self.succeeded(*s))
                        == Some(step)
            }
            Cause::Compensated => self.status == "CANCELLED",
            Cause::Stuck => self.status == "FAILED",
            Cause::Ended => self.status == t.from,
        }
    }
}

/// Places every status of the graph: the row its first incoming transition puts it in.
fn layout(transitions: &[Transition]) -> Vec<Node> {
    let mut rows: [Vec<String>; 3] = Default::default();
    for t in transitions {
        let row = match t.cause {
            Cause::Placed | Cause::Succeeded(_) => 0,
            Cause::Failed(_) => 1,
            Cause::Compensated | Cause::Stuck => 2,
            Cause::Ended => continue,
        };
        let placed = rows.iter().flatten().any(|n| *n == t.to);
        if !placed && t.to != TERMINAL_MARK {
            rows[row].push(t.to.clone());
        }
    }
    let width = |name: &str| name.len() as f64 * NODE_CHAR + 28.0;
    // Forward statuses left to right, each gap wide enough for the label of the step between.
    let mut nodes = Vec::new();
    let mut x = MARGIN + 50.0;
    for name in &rows[0] {
        let w = width(name);
        nodes.push(Node {
            name: name.clone(),
            x: x + w / 2.0,
            y: ROWS[0],
            width: w,
        });
        let gap = transitions
            .iter()
            .filter(|t| t.from == *name && t.to != *name && t.to != TERMINAL_MARK)
            .filter(|t| matches!(t.cause, Cause::Succeeded(_)))
            .map(|t| t.label.len() as f64 * LABEL_CHAR + 24.0)
            .fold(60.0, f64::max);
        x += w + gap;
    }
    let span = x - MARGIN;
    for (row, y) in rows.iter().zip(ROWS).skip(1) {
        let slot = span / (row.len() as f64 + 1.0);
        for (i, name) in row.iter().enumerate() {
            nodes.push(Node {
                name: name.clone(),
                x: MARGIN + slot * (i as f64 + 1.0),
                y,
                width: width(name),
            });
        }
    }
    nodes
}

/// The diagram, with `path`'s transitions and current status marked (classes `taken` and
/// `current`, styled by the explorer's stylesheet).
pub fn render(path: &Path) -> Markup {
    let transitions = graph();
    let nodes = layout(&transitions);
    let find = |name: &str| nodes.iter().find(|n| n.name == name);
    let width = nodes
        .iter()
        .map(|n| n.x + n.width / 2.0)
        .fold(0.0, f64::max)
        + MARGIN
        + 40.0;
    let height = ROWS[2] + NODE_HEIGHT / 2.0 + MARGIN + 30.0;
    html! {
        svg class="saga-diagram" viewBox={"0 0 " (width) " " (height)} role="img"
            aria-label="The saga's state diagram, with this order's path highlighted" {
            defs {
                marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="9"
                    markerHeight="9" markerUnits="userSpaceOnUse" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" class="arrowhead" {}
                }
                marker id="arrow-taken" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="9"
                    markerHeight="9" markerUnits="userSpaceOnUse" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" class="arrowhead taken" {}
                }
            }
            @for t in &transitions {
                @if let Some(edge) = edge(t, &find, path.took(t), fan(&transitions, t)) { (edge) }
            }
            @for n in &nodes {
                g.state.current[n.name == path.status] data-state=(n.name) {
                    rect x=(n.x - n.width / 2.0) y=(n.y - NODE_HEIGHT / 2.0) width=(n.width)
                        height=(NODE_HEIGHT) rx="8" {}
                    text x=(n.x) y=(n.y + 4.5) text-anchor="middle" { (n.name) }
                }
            }
        }
    }
}

/// Which of the failure transitions leaving `t`'s status `t` is, and how many there are (two
/// steps run in PAYMENT_PROCESSED): they leave side by side, their labels one under another.
fn fan(transitions: &[Transition], t: &Transition) -> (usize, usize) {
    let failures: Vec<&Transition> = transitions
        .iter()
        .filter(|o| o.from == t.from && matches!(o.cause, Cause::Failed(_)))
        .collect();
    let index = failures.iter().position(|o| *o == t).unwrap_or(0);
    (index, failures.len().max(1))
}

/// One transition's line and label; `None` if an end is not drawn.
fn edge<'a>(
    t: &Transition,
    find: &impl Fn(&str) -> Option<&'a Node>,
    taken: bool,
    (index, of): (usize, usize),
) -> Option<Markup> {
    let class = if taken { "edge taken" } else { "edge" };
    let marker = if taken {
        "url(#arrow-taken)"
    } else {
        "url(#arrow)"
    };
    let half = NODE_HEIGHT / 2.0;
    let markup = match (t.from.as_str(), t.to.as_str()) {
        (TERMINAL_MARK, to) => {
            let n = find(to)?;
            let (x0, x1) = (n.x - n.width / 2.0 - 40.0, n.x - n.width / 2.0);
            html! { g class=(class) {
                circle cx=(x0) cy=(n.y) r="6" class="mark" {}
                line x1=(x0 + 6.0) y1=(n.y) x2=(x1) y2=(n.y) marker-end=(marker) {}
            } }
        }
        (from, TERMINAL_MARK) => {
            // The end mark: right of a forward status, under the others; the line stops at
            // the mark's outer ring.
            let n = find(from)?;
            let ((sx, sy), (x, y), (ex, ey)) = if n.y == ROWS[0] {
                let right = n.x + n.width / 2.0;
                ((right, n.y), (right + 34.0, n.y), (right + 26.0, n.y))
            } else {
                let bottom = n.y + half;
                ((n.x, bottom), (n.x, bottom + 26.0), (n.x, bottom + 18.0))
            };
            html! { g class=(class) {
                line x1=(sx) y1=(sy) x2=(ex) y2=(ey) marker-end=(marker) {}
                circle cx=(x) cy=(y) r="7" class="mark end" {}
                circle cx=(x) cy=(y) r="4" class="mark" {}
            } }
        }
        (from, to) if from == to => {
            // A step that keeps the status (create-shipping-label): a loop over the node.
            let n = find(from)?;
            let top = n.y - half;
            html! { g class=(class) {
                path d={"M " (n.x - 14.0) " " (top) " C " (n.x - 34.0) " " (top - 44.0) " "
                    (n.x + 34.0) " " (top - 44.0) " " (n.x + 14.0) " " (top)}
                    fill="none" marker-end=(marker) {}
                text x=(n.x) y=(top - 40.0) text-anchor="middle" class="label" { (t.label) }
            } }
        }
        (from, to) => {
            let (a, b) = (find(from)?, find(to)?);
            if a.y == b.y {
                let (x1, x2) = (a.x + a.width / 2.0, b.x - b.width / 2.0);
                html! { g class=(class) {
                    line x1=(x1) y1=(a.y) x2=(x2) y2=(b.y) marker-end=(marker) {}
                    text x=((x1 + x2) / 2.0) y=(a.y - 8.0) text-anchor="middle" class="label" { (t.label) }
                } }
            } else {
                // Downwards: from the bottom of `a` to the top of `b`; the full label (with the
                // compensations it starts) is the tooltip, the short one is drawn.
                let spread = (index as f64 - (of as f64 - 1.0) / 2.0) * 36.0;
                let (x1, y1, x2, y2) = (a.x + spread, a.y + half, b.x, b.y - half);
                let short = t.label.split(" / ").next().unwrap_or(&t.label);
                let short = short.replace(" or timed out", "");
                let short = if short.len() > 30 {
                    "dead-lettered".to_string()
                } else {
                    short
                };
                // The two ends of compensation are labelled on their outer sides.
                let leftwards = x2 < x1 && matches!(t.cause, Cause::Compensated | Cause::Stuck);
                let (lx, anchor) = if leftwards {
                    (-6.0, "end")
                } else {
                    (6.0, "start")
                };
                let ly = y1 + (y2 - y1) * 0.35 + index as f64 * 15.0;
                html! { g class=(class) {
                    title { (t.label) }
                    line x1=(x1) y1=(y1) x2=(x2) y2=(y2) marker-end=(marker) {}
                    text x=(x1 + (x2 - x1) * 0.35 + lx) y=(ly) text-anchor=(anchor) class="label" { (short) }
                } }
            }
        }
    };
    Some(markup)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, compensation: bool, status: StepStatus) -> SagaStep {
        SagaStep {
            name: name.into(),
            compensation,
            status: status as i32,
            ..Default::default()
        }
    }

    fn taken(path: &Path) -> Vec<String> {
        graph()
            .iter()
            .filter(|t| path.took(t))
            .map(|t| format!("{} -> {}", t.from, t.to))
            .collect()
    }

    #[test]
    fn a_confirmed_order_takes_the_forward_row_to_the_end() {
        let steps: Vec<SagaStep> = [
            "reserve-inventory",
            "process-payment",
            "create-shipping-label",
            "confirm-order",
        ]
        .iter()
        .map(|n| step(n, false, StepStatus::Succeeded))
        .collect();
        let path = Path {
            status: "CONFIRMED",
            steps: &steps,
        };
        assert_eq!(
            taken(&path),
            [
                "[*] -> PENDING",
                "PENDING -> INVENTORY_RESERVED",
                "INVENTORY_RESERVED -> PAYMENT_PROCESSED",
                "PAYMENT_PROCESSED -> PAYMENT_PROCESSED",
                "PAYMENT_PROCESSED -> CONFIRMED",
                "CONFIRMED -> [*]",
            ]
        );
    }

    #[test]
    fn a_declined_payment_leaves_the_row_where_payment_was_current() {
        let steps = [
            step("reserve-inventory", false, StepStatus::Succeeded),
            step("process-payment", false, StepStatus::Failed),
            step("release-inventory", true, StepStatus::Succeeded),
        ];
        let path = Path {
            status: "CANCELLED",
            steps: &steps,
        };
        assert_eq!(
            taken(&path),
            [
                "[*] -> PENDING",
                "PENDING -> INVENTORY_RESERVED",
                "INVENTORY_RESERVED -> COMPENSATING",
                "COMPENSATING -> CANCELLED",
                "CANCELLED -> [*]",
            ]
        );
    }

    #[test]
    fn every_status_is_drawn_once_and_the_current_one_is_marked() {
        let svg = render(&Path {
            status: "PAYMENT_PROCESSED",
            steps: &[],
        })
        .into_string();
        for status in [
            "PENDING",
            "INVENTORY_RESERVED",
            "PAYMENT_PROCESSED",
            "CONFIRMED",
            "COMPENSATING",
            "CANCELLED",
            "FAILED",
        ] {
            assert_eq!(
                svg.matches(&format!("data-state=\"{status}\"")).count(),
                1,
                "{status}"
            );
        }
        let current: Vec<&str> = svg
            .split('<')
            .filter(|tag| tag.starts_with("g ") && tag.contains("current"))
            .collect();
        assert_eq!(current.len(), 1, "{current:?}");
        for element in ["line", "circle", "rect", "path", "text", "g"] {
            assert_eq!(
                svg.matches(&format!("<{element} ")).count(),
                svg.matches(&format!("</{element}>")).count(),
                "every <{element}> is closed: inside HTML an unclosed one swallows the rest"
            );
        }
        assert!(current[0].contains(r#"data-state="PAYMENT_PROCESSED""#));
    }
}
