// Draws an input only while another widget of its node holds a given value: an input declared with the
// option `stylekit_shown_with: {widget: value}` (nodes/specs.shown_with; Feature Fusion's gamma, temperature
// and content_kv act only under preset "custom"). A hidden widget keeps its value, which is saved and sent
// as before, so saved workflows and API prompts keep their widget order. Works in the frontends of
// ComfyUI 0.3.64 (1.27) and 0.33.0 (1.49): both skip a widget with `hidden` when drawing; 1.27 still lays
// it out, so a hidden widget also takes no height. A widget fed by a link stays shown.
import { app } from "../../../scripts/app.js";

const OPTION = "stylekit_shown_with";
const NO_HEIGHT = () => [0, -4]; // LiteGraph adds 4 px between widgets

function rulesOf(nodeData) {
  const rules = [];
  for (const section of ["required", "optional"]) {
    for (const [name, spec] of Object.entries(nodeData?.input?.[section] ?? {})) {
      const when = Array.isArray(spec) ? spec[1]?.[OPTION] : undefined;
      if (when) rules.push({ name, when });
    }
  }
  return rules;
}

function linked(node, name) {
  return (node.inputs ?? []).some((input) => input.widget?.name === name && input.link != null);
}

// Shows or hides each ruled widget as its node's values say; true when any changed.
function apply(node, rules) {
  const widget = (name) => node.widgets?.find((w) => w.name === name);
  let changed = false;
  for (const { name, when } of rules) {
    const w = widget(name);
    if (!w) continue;
    const shown = linked(node, name) || Object.entries(when).every(([other, value]) => widget(other)?.value === value);
    if (shown === !w.hidden) continue;
    w.hidden = !shown;
    if (shown) delete w.computeSize;
    else w.computeSize = NO_HEIGHT;
    changed = true;
  }
  return changed;
}

// Fits the node's height to its shown widgets (its width stays the user's).
function fit(node) {
  node.setSize([node.size[0], node.computeSize()[1]]);
  if (node.graph) node.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "StyleKit.ShownWith",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const rules = rulesOf(nodeData);
    if (!rules.length) return;
    const watched = new Set(rules.flatMap(({ when }) => Object.keys(when)));

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      for (const w of this.widgets ?? []) {
        if (!watched.has(w.name)) continue;
        const callback = w.callback;
        const node = this;
        w.callback = function () {
          const out = callback?.apply(this, arguments);
          if (apply(node, rules)) fit(node);
          return out;
        };
      }
      if (apply(this, rules)) fit(this); // a new node: its default values
      return result;
    };

    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      apply(this, rules); // a loaded node keeps its saved size
      return result;
    };

    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function () {
      const result = onConnectionsChange?.apply(this, arguments);
      if (this.graph && apply(this, rules)) fit(this);
      return result;
    };
  },
});
