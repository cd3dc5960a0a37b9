import { defineConfig } from "vite";
import { svelte } from "@sveltejs/vite-plugin-svelte";

// The workstation loads ui/dist from disk through Tauri; `base: "./"` keeps asset paths relative.
export default defineConfig({
  base: "./",
  plugins: [svelte()],
  clearScreen: false,
  build: { target: "es2022", outDir: "dist", emptyOutDir: true },
  test: { include: ["src/**/*.test.ts"] },
});
