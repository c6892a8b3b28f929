// Sign-in: the API key typed once (or passed as #key=… in the link); checked against the API before use.

import { getJson, setKey } from "../api.js";
import { fill, h } from "../dom.js";

export function renderSignIn(main, { notice, onSignedIn }) {
  const input = h("input", { type: "password", name: "key", id: "key", autocomplete: "off", required: true,
    placeholder: "rlp_…", spellcheck: false });
  const message = h("p.error", { id: "sign-in-error", role: "alert" }, notice || "");
  const form = h("form.card.sign-in", {
    id: "sign-in",
    onsubmit: async (event) => {
      event.preventDefault();
      const key = input.value.trim();
      message.textContent = "";
      try {
        await getJson("/jobs?limit=1", { key });
        setKey(key);
        onSignedIn();
      } catch (error) {
        message.textContent = error.status === 401 ? "That key was not accepted." : `Could not reach the API: ${error.message}`;
      }
    },
  },
  h("h1", {}, "Sign in"),
  h("p.muted", {}, "Paste an API key (", h("code", {}, "rlprune serve"), " prints one; ",
    h("code", {}, "rlprune keys create"), " makes more). It is kept in this tab only."),
  h("label", { htmlFor: "key" }, "API key"), input, message,
  h("button.primary", { type: "submit" }, "Sign in"));
  fill(main, form);
  input.focus();
}
