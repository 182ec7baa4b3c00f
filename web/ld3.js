// ComfyUI-LD3 frontend extension: loads workflows saved before the pack's seeds lost their
// "control after generate" widget (LD3 Demo Model, LD3 Generate Teacher, LD3 Train Sigmas).
// Such a workflow stores one more widget value right after the seed ("fixed", "randomize", ...);
// the frontend assigns widget values by position, so every value after the seed would shift.
// Before the graph is configured, that stored control value is dropped.
import { app } from "../../scripts/app.js";

// node type -> [index of the seed among the node's widget values, number of widget values now]
// (tests/test_browser.py checks these against the server's node definitions)
export const SEED_WIDGETS = {
  LD3DemoModel: [3, 4],
  LD3GenerateTeacher: [1, 8],
  LD3TrainSigmas: [9, 12],
};
const CONTROL_VALUES = new Set(["fixed", "increment", "decrement", "randomize"]);

function dropSeedControl(nodes) {
  for (const node of nodes ?? []) {
    const layout = SEED_WIDGETS[node?.type];
    const values = node?.widgets_values;
    if (!layout || !Array.isArray(values)) continue;
    const [seed, count] = layout;
    if (values.length === count + 1 && CONTROL_VALUES.has(values[seed + 1])) {
      values.splice(seed + 1, 1);
    }
  }
}

app.registerExtension({
  name: "ComfyUI-LD3.SeedWidgetMigration",
  beforeConfigureGraph(graphData) {
    dropSeedControl(graphData?.nodes);
    for (const subgraph of graphData?.definitions?.subgraphs ?? []) {
      dropSeedControl(subgraph?.nodes);
    }
  },
});
