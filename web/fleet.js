// The gateway's fleet view: polls GET /api/fleet (operator) every two seconds.
const token = new URLSearchParams(location.search).get("token");
const headers = token ? { Authorization: `Bearer ${token}` } : {};
const $ = (id) => document.getElementById(id);

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text ?? "–";
  row.appendChild(td);
}

function pair(p) {
  return p && p.p50 != null ? `${p.p50} / ${p.p99}` : "–";
}

function fill(body, items, columns) {
  const rows = items.map((item) => {
    const tr = document.createElement("tr");
    for (const column of columns) cell(tr, column(item));
    return tr;
  });
  body.replaceChildren(...rows);
}

async function poll() {
  try {
    const response = await fetch("/api/fleet", { headers });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    $("state").textContent = "live";
    $("state").dataset.state = "live";
    $("free").textContent = data.capacity.free;
    $("total").textContent = data.capacity.total;
    fill($("nodes"), data.nodes, [(n) => n.node.slice(0, 12) + (n.head ? " (head)" : ""), (n) => n.address, (n) => n.streams, (n) => n.free]);
    fill($("sessions"), data.sessions, [
      (s) => s.room, (s) => s.avatar, (s) => s.state, (s) => (s.node || "").slice(0, 12), (s) => s.fps,
      (s) => pair(s.e2e_ms), (s) => pair(s.glass_ms), (s) => (s.restarted ? "yes" : "no"),
    ]);
  } catch (error) {
    $("state").textContent = String(error.message || error);
    $("state").dataset.state = "error";
  }
  setTimeout(poll, 2000);
}

poll();
