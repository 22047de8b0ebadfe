// Small progressive enhancements; every page works without them.
document.addEventListener("change", (event) => {
  const select = event.target.closest("select[data-autosubmit]");
  if (select) select.form.submit();
});
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
    return;
  }
  // Visible progress on work that may take a moment (e.g. creating an organization).
  if (form.dataset.busyLabel) {
    const button = form.querySelector("button[type=submit]");
    if (button) {
      button.disabled = true;
      button.setAttribute("aria-busy", "true");
      button.textContent = form.dataset.busyLabel;
    }
  }
});
document.addEventListener("click", (event) => {
  // Close open header menus when clicking elsewhere.
  document.querySelectorAll("details.menu[open]").forEach((menu) => {
    if (!menu.contains(event.target)) menu.removeAttribute("open");
  });
});
document.addEventListener("click", (event) => {
  // Copy a value shown once (a new API key).
  const button = event.target.closest("[data-copy-button]");
  if (!button) return;
  const value = button.parentElement.querySelector("[data-copy-value]");
  if (value && navigator.clipboard) navigator.clipboard.writeText(value.textContent.trim());
});
