// The theme buttons (account menu, profile page) show the choice at once; the form still posts it, and the
// server renders it as <html data-theme> on every page from then on. Without JavaScript the post alone does it.
document.addEventListener("submit", (event) => {
  const button = event.submitter;
  if (!event.target.matches("form[data-theme-form]") || !button || button.name !== "theme") return;
  document.documentElement.dataset.theme = button.value;
  document.querySelectorAll("form[data-theme-form] button[name=theme]").forEach((each) => {
    each.setAttribute("aria-pressed", String(each.value === button.value));
  });
});
