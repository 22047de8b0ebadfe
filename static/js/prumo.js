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
  // htmx forms are busy from htmx:beforeRequest to htmx:afterRequest (below).
  if (!event.defaultPrevented && !isHtmx(form)) busyStart(form, event.submitter);
});

// Visible progress on forms that start work (`data-busy-label`): the submit button says what is
// happening, is disabled and aria-busy until the answer arrives (the next page, or htmx's swap or error).
// A disabled button's name is not submitted: such forms carry their values in hidden inputs.
function isHtmx(form) {
  return form.matches("[hx-post], [hx-get], [hx-put], [hx-patch], [hx-delete]");
}
function busyStart(form, submitter) {
  if (!form.dataset.busyLabel) return;
  const button = submitter && form.contains(submitter) ? submitter : form.querySelector("button[type=submit]");
  if (!button || button.disabled) return;
  button.dataset.idleLabel = button.textContent;
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  button.textContent = form.dataset.busyLabel;
}
function busyEnd(root) {
  root.querySelectorAll("button[aria-busy=true]").forEach((button) => {
    button.disabled = false;
    button.removeAttribute("aria-busy");
    if (button.dataset.idleLabel !== undefined) button.textContent = button.dataset.idleLabel;
    delete button.dataset.idleLabel;
  });
}
document.addEventListener("htmx:beforeRequest", (event) => {
  const form = event.detail.elt.closest && event.detail.elt.closest("form");
  if (form && isHtmx(form)) busyStart(form, event.detail.requestConfig && event.detail.requestConfig.triggeringEvent
    ? event.detail.requestConfig.triggeringEvent.submitter : null);
});
document.addEventListener("htmx:afterRequest", (event) => {
  const form = event.detail.elt.closest && event.detail.elt.closest("form");
  if (form) busyEnd(form);
});
// Back to a page from the browser's cache: its forms were left busy.
window.addEventListener("pageshow", (event) => {
  if (event.persisted) busyEnd(document);
});

// Toasts (templates/_toasts.html): dismissed by their button; errors stay, others leave after a while
// (not while pointed at or focused).
const TOAST_MS = 6000;
function toastWatch(root) {
  root.querySelectorAll("[data-toast]:not([data-toast-timed])").forEach((toast) => {
    toast.dataset.toastTimed = "";
    if (toast.getAttribute("role") === "alert") return;
    const leave = () => {
      if (toast.matches(":hover, :focus-within")) setTimeout(leave, TOAST_MS);
      else toast.remove();
    };
    setTimeout(leave, TOAST_MS);
  });
}
document.addEventListener("DOMContentLoaded", () => toastWatch(document));
document.addEventListener("htmx:oobAfterSwap", () => toastWatch(document));
document.addEventListener("click", (event) => {
  const close = event.target.closest("[data-toast-close]");
  if (close) close.closest("[data-toast]").remove();
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
