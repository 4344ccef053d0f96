// socketlab browser chat: the chat's line protocol over a WebSocket at /ws.
// Every server text goes into the page as text (textContent), never as HTML.
(() => {
  'use strict';

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $('status'), reconnect: $('reconnect'), alertBox: $('alert-box'), alert: $('alert'),
    dismiss: $('dismiss'), name: $('name'), room: $('room'), members: $('members'),
    memberCount: $('member-count'), messages: $('messages'), nickForm: $('nick-form'),
    nickInput: $('nick-input'), roomForm: $('room-form'), roomInput: $('room-input'),
    leave: $('leave'), messageForm: $('message-form'), messageInput: $('message-input'),
  };
  const buttons = ['rename', 'join', 'leave', 'send'].map($);

  const NAME = '([A-Za-z0-9_-]{1,32})';
  const NOTICES = {
    welcome: new RegExp(`^welcome ${NAME}, you are in ${NAME} \\(type /help\\)$`),
    youAreIn: new RegExp(`^you are in ${NAME}$`),
    renamed: new RegExp(`^${NAME} is now known as ${NAME}$`),
    joined: new RegExp(`^${NAME} joined ${NAME}$`),
    left: new RegExp(`^${NAME} left ${NAME}(?: \\(.*\\))?$`),
    who: new RegExp(`^in ${NAME}: (.*)$`),
  };
  const CHAT = /^<([^>\s]+)> (\(private\) )?/;
  const MAX_LINES = 500;

  // Reconnecting: the first retry after about a second, each next one twice as late, at most 30 s;
  // each delay is drawn between half and all of that, so that pages the server dropped together
  // do not all come back in the same instant.
  const FIRST_RETRY = 1000;
  const LAST_RETRY = 30000;

  let ws = null;
  let me = '';          // our name, as the server knows it
  let chosenName = '';  // the name we picked with Rename; re-applied after a reconnect
  let chosenRoom = '';  // the room we were last put in; re-joined after a reconnect
  let room = '';
  let members = [];
  let pendingWho = 0;   // /who replies we asked for ourselves (not shown in the log)
  let leaving = false;  // we sent /quit: the close that follows is ours, not a loss
  let retries = 0;      // reconnection attempts since the last welcome
  let retryTimer = 0;
  let countdownTimer = 0;

  // -- the message list ------------------------------------------------------

  function addLine(line, kind) {
    const item = document.createElement('li');
    item.className = `line ${kind}`;
    const chat = kind.startsWith('chat') ? CHAT.exec(line) : null;
    if (chat) {
      const who = document.createElement('span');
      who.className = 'who';
      who.textContent = `<${chat[1]}>`;
      item.append(who, document.createTextNode(line.slice(who.textContent.length)));
    } else {
      item.textContent = line;
    }
    const list = ui.messages;
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.append(item);
    while (list.childElementCount > MAX_LINES) list.firstElementChild.remove();
    if (atBottom || kind.includes('own')) list.scrollTop = list.scrollHeight;
  }

  function showAlert(text) {
    ui.alert.textContent = text;
    ui.alertBox.hidden = false;
  }

  function clearAlert() {
    ui.alert.textContent = '';
    ui.alertBox.hidden = true;
  }

  // -- state -----------------------------------------------------------------

  function renderMembers() {
    ui.members.replaceChildren(...members.map((name) => {
      const item = document.createElement('li');
      item.textContent = name;
      if (name === me) item.classList.add('me');
      return item;
    }));
    ui.memberCount.textContent = `(${members.length})`;
  }

  function setName(name) {
    me = name;
    ui.name.textContent = name;
    renderMembers();
  }

  function setRoom(name) {
    room = name;
    ui.room.textContent = name;
    members = [me];
    renderMembers();
    pendingWho += 1;
    send('/who');
  }

  // Returns false when the line should not appear in the log.
  function notice(text) {
    let m;
    if ((m = NOTICES.welcome.exec(text))) {
      retries = 0;
      setName(m[1]);
      setRoom(m[2]);
      // After a reconnect: take our name and our room again.
      if (chosenName && chosenName !== m[1]) send(`/nick ${chosenName}`);
      if (chosenRoom && chosenRoom !== m[2]) send(`/join ${chosenRoom}`);
    } else if ((m = NOTICES.youAreIn.exec(text))) {
      clearAlert();
      chosenRoom = m[1];
      setRoom(m[1]);
    } else if ((m = NOTICES.renamed.exec(text))) {
      if (m[1] === me) {
        chosenName = m[2];
        setName(m[2]);
      }
      members = members.map((name) => (name === m[1] ? m[2] : name));
      renderMembers();
    } else if ((m = NOTICES.joined.exec(text))) {
      if (m[2] === room && !members.includes(m[1])) members.push(m[1]);
      renderMembers();
    } else if ((m = NOTICES.left.exec(text))) {
      if (m[2] === room) members = members.filter((name) => name !== m[1]);
      renderMembers();
    } else if ((m = NOTICES.who.exec(text))) {
      if (m[1] === room) {
        members = m[2].split(', ');
        renderMembers();
      }
      if (pendingWho > 0) {
        pendingWho -= 1;
        return false;
      }
    } else if (text === 'server shutting down') {
      setStatus('Server shutting down…', 'closing');
    }
    return true;
  }

  function receive(line) {
    if (line.startsWith('* ')) {
      if (notice(line.slice(2))) addLine(line, 'notice');
    } else if (line.startsWith('! ')) {
      addLine(line, 'error');
      showAlert(line.slice(2));
    } else {
      const chat = CHAT.exec(line);
      addLine(line, chat && chat[2] ? 'chat private' : 'chat');
    }
  }

  // -- the connection --------------------------------------------------------

  function send(text) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    if (/^\/quit(\s|$)/.test(text.trim())) leaving = true;
    ws.send(`${text}\n`);
    return true;
  }

  function setStatus(text, state) {
    ui.status.textContent = text;
    ui.status.dataset.state = state;
    const online = state === 'open';
    ui.reconnect.hidden = online || state === 'connecting';
    ui.reconnect.textContent = state === 'waiting' ? 'Try now' : 'Reconnect';
    buttons.forEach((button) => { button.disabled = !online; });
  }

  // What a close means, in words: the WebSocket close codes the server uses (docs/protocol.md).
  function whyClosed(event) {
    if (leaving) return 'You left the chat.';
    switch (event.code) {
      case 1001: return 'The server shut down.';
      case 1013: return 'The server is full.';
      case 1000: return 'The server closed the connection.';
      case 1006: return 'Connection lost: the server went away or the network dropped.';
      default: return `The server closed the connection${event.reason ? ` (${event.reason})` : ''}.`;
    }
  }

  function stopRetrying() {
    clearTimeout(retryTimer);
    clearInterval(countdownTimer);
    retryTimer = 0;
    countdownTimer = 0;
  }

  function scheduleReconnect(why) {
    stopRetrying();
    const ceiling = Math.min(LAST_RETRY, FIRST_RETRY * 2 ** retries);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    const due = Date.now() + delay;
    retries += 1;
    const tell = () => {
      const seconds = Math.max(1, Math.ceil((due - Date.now()) / 1000));
      setStatus(`${why} Reconnecting in ${seconds} s…`, 'waiting');
    };
    tell();
    countdownTimer = setInterval(tell, 250);
    retryTimer = setTimeout(() => {
      stopRetrying();
      connect();
    }, delay);
  }

  function connect() {
    stopRetrying();
    const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
    const socket = new WebSocket(url);
    ws = socket;
    leaving = false;
    pendingWho = 0;
    clearAlert();
    setStatus(retries ? 'Reconnecting…' : 'Connecting…', 'connecting');
    socket.addEventListener('open', () => setStatus('Connected', 'open'));
    socket.addEventListener('message', (event) => {
      if (typeof event.data !== 'string') return;
      event.data.split('\n').forEach((line) => {
        const clean = line.replace(/\r$/, '');
        if (clean) receive(clean);
      });
    });
    socket.addEventListener('close', (event) => {
      if (ws !== socket) return;
      const why = whyClosed(event);
      const wasOpen = ui.status.dataset.state !== 'connecting';
      members = [];
      renderMembers();
      if (leaving) {
        setStatus(why, 'closed');
        addLine(`* ${why}`, 'notice local');
        return;
      }
      if (wasOpen) addLine(`* ${why}`, 'notice local');
      scheduleReconnect(wasOpen ? why : 'The server cannot be reached.');
    });
  }

  // Back online: no need to wait for the next attempt.
  window.addEventListener('online', () => {
    if (retryTimer) connect();
  });

  // -- the forms -------------------------------------------------------------

  ui.nickForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const name = ui.nickInput.value.trim();
    if (name && send(`/nick ${name}`)) ui.nickInput.value = '';
  });

  ui.roomForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const name = ui.roomInput.value.trim();
    if (name && send(`/join ${name}`)) ui.roomInput.value = '';
  });

  ui.leave.addEventListener('click', () => send('/leave'));

  ui.messageForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const text = ui.messageInput.value;
    if (!text.trim() || !send(text)) return;
    ui.messageInput.value = '';
    const command = text.startsWith('/') && !text.startsWith('//');
    if (!command) addLine(`<${me}> ${text.startsWith('//') ? text.slice(1) : text}`, 'chat own');
  });

  ui.dismiss.addEventListener('click', () => {
    clearAlert();
    ui.messageInput.focus();
  });

  ui.reconnect.addEventListener('click', () => {
    connect();
    ui.messageInput.focus();
  });

  connect();
})();
