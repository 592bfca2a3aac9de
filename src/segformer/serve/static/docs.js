// A plain rendering of /openapi.json (FastAPI's own docs pages load their scripts from a CDN).
"use strict";

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

window.addEventListener("DOMContentLoaded", async () => {
  const root = document.getElementById("api");
  let spec;
  try {
    spec = await (await fetch("/openapi.json")).json();
  } catch (err) {
    root.textContent = `cannot load /openapi.json: ${err.message}`;
    return;
  }
  root.replaceChildren();
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const section = el("section");
      section.append(el("h2", `${method.toUpperCase()} ${path}`));
      if (op.summary) section.append(el("p", op.summary));
      if (op.description) section.append(el("p", op.description));
      const params = op.parameters || [];
      if (params.length) {
        const ul = el("ul");
        for (const p of params) {
          const schema = p.schema || {};
          const kinds = schema.enum || (schema.anyOf || []).map((s) => s.type) || [];
          const type = schema.enum ? schema.enum.join(" | ") : schema.type || kinds.join(" | ");
          const def = schema.default !== undefined ? ` (default ${schema.default})` : "";
          ul.append(el("li", `?${p.name}: ${type}${def}. ${p.description || ""}`));
        }
        section.append(el("h3", "query"), ul);
      }
      if (op.requestBody) section.append(el("p", `body: ${Object.keys(op.requestBody.content).join(" or ")}`));
      const ul = el("ul");
      for (const [code, r] of Object.entries(op.responses || {})) ul.append(el("li", `${code}: ${r.description}`));
      section.append(el("h3", "answers"), ul);
      root.append(section);
    }
  }
});
