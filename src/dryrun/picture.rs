//! `--svg FILE`: every node and device before and after the dry run, coloured by the model that
//! occupies it, so stranded big GPUs (held by pods that would fit a smaller class) stand out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use crate::core::schedule::stranded_devices;
use crate::core::{Inventory, NodeInfo};

const DEVICE_W: u32 = 34;
const DEVICE_H: u32 = 22;
const ROW_H: u32 = 30;
const LABEL_W: u32 = 230;
const PANEL_GAP: u32 = 40;
const HEADER_H: u32 = 60;
/// Headroom assumed when judging whether a smaller class would have done (the default).
const STRANDED_HEADROOM: u8 = 15;

/// What occupies one device: models and reserved VRAM.
#[derive(Default)]
struct Occupancy {
    models: BTreeSet<String>,
    largest_share_mib: u64,
    exclusive: bool,
}

fn occupancy(inventory: &Inventory) -> HashMap<(String, u32), Occupancy> {
    let mut out: HashMap<(String, u32), Occupancy> = HashMap::new();
    for (_, placement) in inventory.placements() {
        for share in &placement.shares {
            let entry = out
                .entry((placement.node.clone(), share.index))
                .or_default();
            entry.models.insert(
                placement
                    .model
                    .clone()
                    .unwrap_or_else(|| placement.pod.clone()),
            );
            entry.largest_share_mib = entry.largest_share_mib.max(share.vram_mib);
            entry.exclusive |= placement.exclusive;
        }
    }
    out
}

/// Distinct colours: models in name order, hues a golden angle apart.
fn palette(models: &BTreeSet<String>) -> HashMap<String, String> {
    models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let hue = (i as f64 * 137.508) % 360.0;
            let lightness = if i % 2 == 0 { 50 } else { 65 };
            (m.clone(), format!("hsl({hue:.0}, 70%, {lightness}%)"))
        })
        .collect()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn sorted_nodes(inventory: &Inventory) -> Vec<&NodeInfo> {
    let mut nodes: Vec<&NodeInfo> = inventory.nodes().collect();
    nodes.sort_by(|a, b| (&a.zone, &a.name).cmp(&(&b.zone, &b.name)));
    nodes
}

fn panel(
    out: &mut String,
    inventory: &Inventory,
    colours: &HashMap<String, String>,
    x0: u32,
    title: &str,
    stranded_count: &mut usize,
) {
    let occupied = occupancy(inventory);
    let stranded = stranded_devices(inventory, STRANDED_HEADROOM);
    let _ = writeln!(
        out,
        r#"<text x="{x0}" y="{}" class="title">{}</text>"#,
        HEADER_H - 20,
        escape(title)
    );
    for (row, node) in sorted_nodes(inventory).into_iter().enumerate() {
        let y = HEADER_H + row as u32 * ROW_H;
        let label = format!("{} ({})", node.name, node.zone.as_deref().unwrap_or("-"));
        let _ = writeln!(
            out,
            r#"<text x="{x0}" y="{}" class="node">{}</text>"#,
            y + 15,
            escape(&label)
        );
        for (i, device) in node.devices.iter().enumerate() {
            let x = x0 + LABEL_W + i as u32 * (DEVICE_W + 4);
            let occupant = occupied.get(&(node.name.clone(), device.index));
            let fill = occupant
                .and_then(|o| o.models.iter().next())
                .and_then(|m| colours.get(m).cloned())
                .unwrap_or_else(|| "#f2f2f2".to_string());
            let stranded = stranded.contains(&(node.name.clone(), device.index));
            *stranded_count += usize::from(stranded);
            let used = device.used_mib().min(device.total_mib);
            let level = (used * u64::from(DEVICE_H))
                .checked_div(device.total_mib)
                .unwrap_or(0) as u32;
            let tip = match occupant {
                Some(o) => format!(
                    "{} #{} {}: {} ({} MiB of {} MiB){}",
                    node.name,
                    device.index,
                    device.product(),
                    o.models.iter().cloned().collect::<Vec<_>>().join(", "),
                    used,
                    device.total_mib,
                    if stranded {
                        " - stranded: a smaller class would fit"
                    } else {
                        ""
                    }
                ),
                None => format!(
                    "{} #{} {}: free ({} MiB)",
                    node.name,
                    device.index,
                    device.product(),
                    device.total_mib
                ),
            };
            let _ = writeln!(
                out,
                r##"<g class="device{}"><title>{}</title><rect x="{x}" y="{y}" width="{DEVICE_W}" height="{DEVICE_H}" fill="{fill}" stroke="{}" stroke-width="{}"/><rect x="{}" y="{}" width="4" height="{level}" fill="#333"/></g>"##,
                if stranded { " stranded" } else { "" },
                escape(&tip),
                if stranded { "#d00" } else { "#888" },
                if stranded { 3 } else { 1 },
                x + DEVICE_W - 5,
                y + DEVICE_H - level,
            );
        }
    }
}

/// Renders the before/after picture.
pub fn render(before: &Inventory, after: &Inventory) -> String {
    let max_devices = after.nodes().map(|n| n.devices.len()).max().unwrap_or(0) as u32;
    let panel_w = LABEL_W + max_devices.max(1) * (DEVICE_W + 4);
    let rows = after.node_count().max(before.node_count()) as u32;
    let names: BTreeSet<String> = occupancy(before)
        .into_values()
        .chain(occupancy(after).into_values())
        .flat_map(|o| o.models.into_iter())
        .collect();
    let colours = palette(&names);
    let models: BTreeMap<&String, &String> = colours.iter().collect();
    let legend_h = 20 + models.len() as u32 * 18;
    let width = 2 * panel_w + PANEL_GAP + 20;
    let height = HEADER_H + rows * ROW_H + legend_h + 30;
    let mut body = String::new();
    let (mut stranded_before, mut stranded_after) = (0, 0);
    panel(
        &mut body,
        before,
        &colours,
        10,
        "before",
        &mut stranded_before,
    );
    panel(
        &mut body,
        after,
        &colours,
        10 + panel_w + PANEL_GAP,
        "after",
        &mut stranded_after,
    );
    let legend_y = HEADER_H + rows * ROW_H + 20;
    let _ = writeln!(
        body,
        r#"<text x="10" y="{legend_y}" class="node">colour = model; dark bar = VRAM in use; red outline = stranded ({stranded_after} after, {stranded_before} before)</text>"#
    );
    for (i, (model, fill)) in models.iter().enumerate() {
        let y = legend_y + 8 + i as u32 * 18;
        let _ = writeln!(
            body,
            r#"<rect x="10" y="{y}" width="14" height="14" fill="{fill}"/><text x="30" y="{}" class="node">{}</text>"#,
            y + 12,
            escape(model)
        );
    }
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif">
<style>.title {{ font-size: 18px; font-weight: bold; }} .node {{ font-size: 12px; }}</style>
<rect width="100%" height="100%" fill="white"/>
{body}</svg>
"#
    )
}
